"""The edge runtime: sources → quality → preprocess → scheduler/inference → postprocess → rules → sinks.

Threads: one per source (read, check and preprocess: the "decode" threads), the scheduler's inference workers,
one output thread that post-processes, applies the rules and feeds the sinks, in order, and, when the model was
opened through a link, the model watch that swaps a changed model in place (model_watch.py).
"""
from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from pathlib import Path

from edgepilot.errors import ConfigError, EdgepilotError
from edgepilot.runtime.decoders import build_postprocessor
from edgepilot.runtime.heap import hold_freed_memory
from edgepilot.runtime.item import Item
from edgepilot.runtime.loader import load_model, open_sessions
from edgepilot.runtime.logs import add_json_log
from edgepilot.runtime.model_watch import ModelWatch, serve_model
from edgepilot.runtime.pipeline_config import PipelineConfig, ServerConfig, load_pipeline_config
from edgepilot.runtime.positions import Positions
from edgepilot.runtime.preprocess import Preprocessor
from edgepilot.runtime.quality import QualityChecker, combined_stats
from edgepilot.runtime.rules import RuleEngine
from edgepilot.runtime.scheduler import Scheduler, limit_library_threads, plan_threads
from edgepilot.runtime.sinks import WebhookSink, WebhookSinkConfig, open_sink
from edgepilot.runtime.sources import open_source
from edgepilot.runtime.sources.decoder_process import Stages
from edgepilot.runtime.stats import PipelineStats

log = logging.getLogger(__name__)
__all__ = ["Pipeline", "PipelineConfig", "ServerConfig", "load_pipeline_config"]  # the config moved; imported here too


def _top1(item: Item) -> float | None:
    """The result's top-1 score (best class, or best detection): what probation compares between models."""
    r = item.result
    if r is None:
        return None
    if r.kind == "classification" and r.classes:
        return float(r.classes[0][2])
    if r.kind == "detection" and r.detections:
        return float(max(d.score for d in r.detections))
    return None


class Pipeline:
    def __init__(self, cfg: PipelineConfig, *, check_only: bool = False) -> None:
        """Loads the model, checks its outputs against the decoder and opens the sources and sinks; `check_only`
        (see `check`) opens every source once instead and no sink."""
        self.cfg = cfg
        self.stats = PipelineStats()
        self._log_handler = add_json_log(cfg.logging) if cfg.logging and not check_only else None
        self._stop = threading.Event()
        self._out: queue.Queue[Item | None] = queue.Queue(maxsize=cfg.scheduler.queue_size * 2)
        self._max_items: int | None = None
        self._submitted = 0
        self._submit_lock = threading.Lock()
        self._source_failures: dict[str, str] = {}  # source id -> why it stopped before its end
        self.on_swap = None  # called with each model swap (or refusal) the watch reports
        self.last_swap: dict | None = None
        self.restart_reason: str | None = None  # set when a change can only be applied by a restart
        self.served_version: int | None = None  # the server's version of the pipeline's model, when it serves it
        try:
            self._build(check_only)
        except BaseException:
            self._close_all()
            raise

    @classmethod
    def check(cls, cfg: PipelineConfig) -> str:
        """What `edgepilot run --check` does: load the model, check the decoder on its outputs and open every
        source once, without running; raises what a run would fail to start with, else returns a summary."""
        p = cls(cfg, check_only=True)
        p._close_all()
        return (f"model {Path(cfg.model.path).name} on {p.sessions[0].__class__.__name__} fits postprocess "
                f"{cfg.postprocess.type}; {len(p.sources)} source(s) opened, {len(cfg.rules)} rule(s), "
                f"{len(cfg.sinks)} sink(s)")

    def _build(self, check_only: bool) -> None:
        cfg = self.cfg
        self.sources, self.sinks = [], []
        self.watch = ModelWatch(cfg, load_pipeline_config) if cfg.model.watch and not check_only else None
        self.model = load_model(cfg.model)
        self.plan = plan_threads(cfg.scheduler, decode_threads=len(cfg.sources))
        for note in self.plan.notes:
            log.warning("scheduler: %s", note)
        self.preprocess = Preprocessor(cfg.preprocess, self.model.inputs[0])
        self.postprocess = build_postprocessor(cfg.postprocess, self.model.outputs, self.preprocess.input_size)
        self.quality = QualityChecker(cfg.quality)
        self.rules = RuleEngine(cfg.rules, namespace=cfg.name)
        self.sources = [open_source(self._planned(s)) for s in cfg.sources]
        for source in self.sources:
            if hasattr(source, "attach") and not self.preprocess.vector:  # decode: process checks and preprocesses
                source.attach(Stages(cfg.quality, cfg.preprocess, self.model.inputs[0]),
                              lambda n, sid=source.id: self.stats.count("skipped_quality", sid, n))
        ids = [s.id for s in self.sources]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"sources need distinct ids: {ids}")
        self._by_id = {s.id: s for s in self.sources}
        self.server, self._routed_webhooks = None, {}
        self.positions = None
        if any(getattr(s, "resume", False) for s in cfg.sources) and not check_only:
            self.positions = Positions(Path(cfg.workdir) / f"{cfg.name}.positions.json")
            for source in self.sources:
                if (at := self.positions.get(source.id)) is not None:
                    source.resume_after(at)
        workers = self.plan.workers
        if check_only:
            for source in self.sources:
                source.probe()
            workers = 1
        else:
            self._open_sinks()
        spec = self.model.inputs[0]
        self.sessions, self.load_s, probe = open_sessions(self.model, cfg.model, workers, self.plan.model_threads,
                                                          {spec.name: self.preprocess.fed_shape()},
                                                          spin_wait=self.plan.spin_wait)
        self.postprocess.check({k: v[0] for k, v in probe.items()})  # a wrong decoder would publish garbage
        self.scheduler = Scheduler(self.sessions, cfg.scheduler, self.stats, emit=self._out.put)
        if self.server is not None and cfg.server.serve_model:
            self.server.app.state.repo.put(cfg.name, serve_model(self, self.model, 1))
            self.served_version = 1
        log.info("pipeline %s: %s on %s, %s (scheduler: in the YAML), %d source(s), loaded in %.2f s", cfg.name,
                 Path(cfg.model.path).name, self.sessions[0].__class__.__name__, self.plan.describe(),
                 len(self.sources), self.load_s)

    def _planned(self, source_cfg):
        """The source's config with `decode_threads: auto` set to the thread plan's FFmpeg threads."""
        if getattr(source_cfg, "decode_threads", None) != "auto":
            return source_cfg
        return source_cfg.model_copy(update={"decode_threads": self.plan.ffmpeg_threads})

    def _open_sinks(self) -> None:
        cfg = self.cfg
        workdir = Path(cfg.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        by_id = {s.id: s for s in self.sources}
        for s in cfg.sinks:
            self.sinks.append(open_sink(s, pipeline=cfg.name, workdir=workdir,
                                        fps_of=lambda sid: getattr(by_id.get(sid), "fps", None)))
        if cfg.server is not None:  # imported here: a pipeline without a server needs no web framework
            from edgepilot.serve.app import pipeline_server

            self.server, stream = pipeline_server(cfg.server.host, cfg.server.port, cfg.server.models, self.stats)
            self.sinks.append(stream)
        self._workdir = workdir

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, *, duration: float | None = None, max_items: int | None = None,
            on_stats=None, stats_interval_s: float = 5.0, on_swap=None) -> dict:
        """Runs until every source ends, `duration` passes, `max_items` were taken, or stop(); returns a summary.
        `on_swap` gets each model swapped in place (or refused) while it runs."""
        self.on_swap = on_swap or self.on_swap
        self._max_items = max_items
        self.stats.started = time.monotonic()  # fps counts from the first item, not from the model load
        # A worker whose native call (inference, decode) returns waits for the GIL up to the switch interval while
        # another stage runs Python; CPython's default 5 ms would idle the model for whole frames.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        hold_freed_memory()
        limit_library_threads(self.plan)
        self.scheduler.start()
        if self.server is not None:
            self.server.start()
        if self.watch is not None:
            self.watch.start(self)
        out = threading.Thread(target=self._output, name="output", daemon=True)
        out.start()
        readers = [threading.Thread(target=self._read, args=(s,), name=f"source-{s.id}", daemon=True)
                   for s in self.sources]
        for t in readers:
            t.start()
        deadline = time.monotonic() + duration if duration else None
        next_stats = time.monotonic() + stats_interval_s
        try:
            while any(t.is_alive() for t in readers):
                if deadline and time.monotonic() >= deadline:
                    break
                if self._stop.wait(0.1):
                    break
                if on_stats and time.monotonic() >= next_stats:
                    on_stats(self.snapshot())
                    next_stats += stats_interval_s
        finally:
            self._stop.set()
            if self.watch is not None:
                self.watch.stop()
            for s in self.sources:
                s.stop()
            for t in readers:
                t.join(5)
            self.scheduler.close(timeout=30)
            self._out.put(None)
            out.join(60)
            if self.server is not None:
                self.server.stop()
            self._close_all()
        return self.summary()

    def stop(self) -> None:
        """Thread- and signal-safe: ends run() after what is in flight has gone through."""
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def reload(self) -> None:
        """Signal-safe (SIGHUP): look for a changed model now instead of at the next poll."""
        if self.watch is not None:
            self.watch.poke()

    def request_restart(self, reason: str) -> None:
        """End run() so that the process restarts on what changed (`edgepilot run` then exits with 75)."""
        self.restart_reason = reason
        self._stop.set()

    def _read(self, source) -> None:
        try:
            for item in source:
                if self._stop.is_set():
                    break
                if not self._take_one():
                    self._stop.set()
                    break
                self.stats.count("received", item.source)
                self._submit(item)
        except EdgepilotError as e:
            log.error("source %s stopped: %s", source.id, e)
            self.stats.count("source_errors", source.id)
            self._source_failures[source.id] = str(e)
        except Exception as e:
            log.exception("source %s failed", source.id)
            self.stats.count("source_errors", source.id)
            self._source_failures[source.id] = f"{type(e).__name__}: {e}"

    def _take_one(self) -> bool:
        with self._submit_lock:
            if self._max_items is not None and self._submitted >= self._max_items:
                return False
            self._submitted += 1
            return True

    def _submit(self, item: Item) -> None:
        if item.meta.pop("preprocessed", False):  # checked and preprocessed in the decoder process
            self.stats.stage("preprocess", item.timings.get("preprocess", 0.0))
            self.scheduler.submit(item)
            return
        t0 = time.perf_counter()
        checked = self.quality.process(item)
        if checked is None:
            self.stats.count("skipped_quality", item.source)
            return
        try:
            item = self.preprocess.process(checked)
        except Exception as e:  # an odd frame never stops its source
            item.error = f"preprocess failed: {e}"
        dt = time.perf_counter() - t0
        item.timings["preprocess"] = dt
        self.stats.stage("preprocess", dt)
        self.scheduler.submit(item)

    def _output(self) -> None:
        while True:
            item = self._out.get()
            if item is None:
                return
            try:
                self._deliver(item)
            except Exception:  # the output thread must outlive any one item
                log.exception("output stage failed on %s #%d", item.source, item.seq)
                self.stats.count("errors", item.source)
            finally:
                item.done()

    def _deliver(self, item: Item) -> None:
        if item.error is None:
            t0 = time.perf_counter()
            item = self.postprocess.process(item)  # never raises: a bad output becomes item.error
            item.timings["postprocess"] = dt = time.perf_counter() - t0
            self.stats.stage("postprocess", dt)
            if item.error:  # failed inference was counted by the scheduler
                self.stats.count("errors", item.source)
            elif (top1 := _top1(item)) is not None:
                self.stats.confidence(top1)
        if item.error:
            log.warning("%s #%d: %s", item.source, item.seq, item.error)
        t0 = time.perf_counter()
        self.rules.process(item)
        dt = time.perf_counter() - t0
        self.stats.stage("rules", dt)
        if item.events:
            self.stats.count("events", item.source, len(item.events))
        t0 = time.perf_counter()
        for sink in [*self.sinks, *self._webhooks_for(item)]:
            try:
                sink.write(item)
            except Exception as e:
                self.stats.count(f"sink_errors.{sink.name}")
                log.warning("sink %s failed on %s #%d: %s", sink.name, item.source, item.seq, e)
        self.stats.stage("sinks", time.perf_counter() - t0)
        if self.positions is not None and (at := self._by_id[item.source].position(item)) is not None:
            self.positions.record(item.source, at)  # after the sinks: a restart resumes after what they took
        self.stats.stage("end_to_end", max(0.0, time.time() - item.ts))  # capture to published
        self.stats.completed()

    def _webhooks_for(self, item: Item) -> list[WebhookSink]:
        """Webhooks named by rule actions, made on first use (each with its own spool and retry thread)."""
        for url in {u for e in item.events for u in e.webhooks}:
            if url not in self._routed_webhooks:
                self._routed_webhooks[url] = WebhookSink(WebhookSinkConfig(type="webhook", url=url), self._workdir,
                                                         only_routed=True)
        return list(self._routed_webhooks.values())

    def _close_all(self) -> None:
        for sink in [*getattr(self, "sinks", []), *getattr(self, "_routed_webhooks", {}).values()]:
            try:
                sink.close()
            except Exception as e:
                log.warning("closing sink %s: %s", sink.name, e)
        for source in getattr(self, "sources", []):  # a failed start may leave a source connected
            source.stop()
        for s in getattr(self, "sessions", []):
            s.close()
        if self._log_handler is not None:
            logging.getLogger("edgepilot").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def snapshot(self) -> dict:
        """The statistics, with the inputs the sources skipped (unreadable files, malformed payloads) counted in
        `skipped_input` beside the quality checks' `skipped_quality`."""
        snap = self.stats.snapshot()
        for s in self.sources:
            n = s.stats().get("skipped", 0)
            if n:
                snap["counters"]["skipped_input"] = snap["counters"].get("skipped_input", 0) + n
                snap["sources"].setdefault(s.id, {})["skipped_input"] = n
        return snap

    def summary(self) -> dict:
        snap = self.snapshot()
        snap["sources_detail"] = {s.id: s.stats() for s in self.sources}
        snap["quality"] = combined_stats(self.quality.stats(),
                                         *(s.quality_stats() for s in self.sources if hasattr(s, "quality_stats")))
        snap["rules"] = self.rules.stats()
        snap["threads"] = {"cores": self.plan.cores, "decode": self.plan.decode_threads,
                           "workers": self.plan.workers, "model_threads": self.plan.model_threads,
                           "spin_wait": self.plan.spin_wait, "ffmpeg_threads": self.plan.ffmpeg_threads}
        outbox = next((s.outbox for s in self.sinks if hasattr(s, "outbox")), None)
        if outbox is not None:
            snap["outbox"] = outbox.stats()
        snap["model"] = {"path": self.cfg.model.path, "last_swap": self.last_swap}
        snap["problems"] = self.problems()
        return snap

    def problems(self) -> list[str]:
        """What makes a finished run a failure (`edgepilot run` exits non-zero): every source failed, a file ended
        early as damaged, or events are left undelivered."""
        out = []
        if self.sources and len(self._source_failures) == len(self.sources):
            out.append("every source failed: " + "; ".join(f"{k}: {v}" for k, v in self._source_failures.items()))
        out += [f"source {s.id}: the file {s.stats()['ended_early']} (damaged or truncated)"
                for s in self.sources if s.stats().get("ended_early")]
        for sink in [*self.sinks, *self._routed_webhooks.values()]:
            n, where = sink.undelivered() if hasattr(sink, "undelivered") else (0, "")
            if n:
                out.append(f"{n} event message(s) not delivered: they wait in {where} and go out on the next run")
            ob = getattr(sink, "outbox", None)
            if ob is not None and ob.stats()["replaced"]:
                out.append(f"the MQTT outbox {ob.path} was deleted or replaced while running: "
                           f"{ob.stats()['lost']} pending message(s) lost with it")
        return out
