"""Swapping a running pipeline's model in place: watch what it loaded through a link (the device agent's `current`),
load and check the new model beside the old one, switch the scheduler (and the server) between batches, report it.

Two cases. The pipeline file was opened through a link (`edgepilot run STATE/current/pipeline.yaml`, as the agent's
runtime unit runs it): a new target is a new slot, whose pipeline must equal the running one except for model.path,
else the runtime asks to be restarted to apply it. Or model.path goes through a link: a new target, or another file
at the target, is a new model. Either way a model that does not fit the pipeline is refused and the old one serves on.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgepilot.errors import ConfigError, EdgepilotError, ModelError
from edgepilot.model import Model, TensorSpec
from edgepilot.runtime.loader import ModelConfig, load_model, open_sessions

log = logging.getLogger(__name__)


def link_target(path: str | Path) -> tuple:
    """What `path` resolves to now, and that file's identity (None when missing): a cheap stat, polled."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return (real, None)
    return (real, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))


def through_link(path: str | Path) -> bool:
    return os.path.realpath(path) != os.path.abspath(path)


class ModelWatch:
    """Created before the model loads (what it loaded is the baseline), started with the pipeline's run: a thread
    that stats the watched path every `interval_s` (or at once on `poke`, SIGHUP) and swaps on a change."""

    def __init__(self, cfg, reload_config: Callable, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._reload = reload_config  # load_pipeline_config(path, base=None)
        source = getattr(cfg, "source", None)  # (path as given, link_target at load) for a config read from a file
        self.config_path: str | None = None
        if source is not None and through_link(source[0]):
            self.config_path, self.watched, self._key = source[0], source[0], source[1]
        elif through_link(cfg.model.path):
            self.watched, self._key = cfg.model.path, link_target(cfg.model.path)
        else:
            self.watched = None  # nothing can change under the pipeline: no thread
        # where the running config's paths were resolved, and its model section: what a new slot's file must equal
        self._base = Path(self._key[0]).parent if self.config_path else None
        self._model0 = cfg.model.model_copy()
        self._stop, self._poke = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self.pipeline = None

    def start(self, pipeline) -> None:
        self.pipeline = pipeline
        if self.watched is None:
            return
        log.info("swapping the model in place when %s changes", self.watched)
        self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Check now (signal-safe)."""
        self._poke.set()

    def stop(self, timeout_s: float = 120.0) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self.interval_s)
            self._poke.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:  # the watch outlives anything a model or a file can do
                log.exception("model watch: checking %s failed", self.watched)

    def check(self) -> dict | None:
        """Swap if the watched path changed since the last look; returns what happened (None: nothing changed)."""
        key = link_target(self.watched)
        if key == self._key or key[1] is None and self._key[1] is None:
            return None
        self._key = key
        p = self.pipeline
        where = {"pipeline_dir": str(Path(key[0]).parent)} if self.config_path else {}  # the slot, for the health
        if key[1] is None:
            return _report(p, _event(p, False, key[0], f"{key[0]}: no such file (the old model keeps serving)",
                                     **where))
        if self.config_path is None:
            return swap_model(p, p.cfg.model)
        try:
            new = self._reload(self.config_path)  # paths resolved in the new slot
            as_running = self._reload(self.config_path, base=self._base)  # the same file, resolved as the running
        except EdgepilotError as e:
            return _report(p, _event(p, False, key[0], f"the new pipeline file: {e}", **where))
        differs = _differences(p.cfg.model_copy(update={"model": self._model0}), as_running)
        if differs:
            reason = (f"{key[0]} differs from the running pipeline beyond model.path ({', '.join(differs)}): "
                      f"restarting to apply it")
            _report(p, _event(p, False, key[0], reason, restart=True, **where))
            p.request_restart(reason)
            return {"ok": False, "reason": reason, "restart": True}
        if link_target(new.model.path) == link_target(p.cfg.model.path):
            log.info("%s points to the model already running: nothing to swap", self.watched)
            return None  # e.g. back to the slot whose model was refused
        # the new slot's model section (its paths in that slot), with the shapes the running one was given
        return swap_model(p, new.model.model_copy(update={"input_shapes": p.cfg.model.input_shapes}), **where)


def _differences(running, new) -> list[str]:
    """The config fields that differ, model.path and input shapes (--shape, checked on the model) aside."""
    a, b = running.model_dump(exclude={"model"}), new.model_dump(exclude={"model"})
    out = [k for k in a if a[k] != b.get(k)]
    skip = {"path", "input_shapes"}
    am, bm = running.model.model_dump(exclude=skip), new.model.model_dump(exclude=skip)
    return out + [f"model.{k}" for k in am if am[k] != bm.get(k)]


def _spec(t: TensorSpec) -> str:
    dims = "?" if t.shape is None else "[" + ", ".join(
        str(d) if isinstance(d, int) and d >= 0 else "?" for d in t.shape) + "]"
    return f"{t.name} {t.dtype} {dims}"


def check_fits(running: Model, new: Model) -> None:
    """The new model takes what the preprocessing makes and returns what the decoder reads: the same input and the
    same outputs (names, dtypes, shapes; dynamic dimensions alike) as the running model."""
    old_in, new_in = _spec(running.inputs[0]), _spec(new.inputs[0])
    if old_in != new_in:
        raise ModelError(f"{new.path} does not fit this pipeline: it takes {new_in}, the pipeline feeds {old_in}",
                         hint="a model swapped in place needs the running model's input; restart to change it")
    old_out, new_out = sorted(map(_spec, running.outputs)), sorted(map(_spec, new.outputs))
    if old_out != new_out:
        raise ModelError(f"{new.path} does not fit this pipeline's decoder: it returns {', '.join(new_out)}; "
                         f"the decoder reads {', '.join(old_out)}",
                         hint="a model swapped in place needs the running model's outputs; restart to change them")


def serve_model(p, model: Model, version: int):
    """The pipeline's model as the server serves it (`server: {serve_model: true}`): its own instance, beside the
    pipeline's sessions, batched as the repository batches."""
    from edgepilot.serve.repository import ServedModelConfig
    from edgepilot.serve.served import ServedVersion

    repo = p.server.app.state.repo
    if version == 1 and p.cfg.name in repo.names():
        raise ConfigError(f"server.models has a model named {p.cfg.name!r}, the name the pipeline's model is served as",
                          hint="rename the pipeline (name:) or that model folder")
    d = ServedModelConfig()
    return ServedVersion(p.cfg.name, version, model, engine=p.cfg.model.engine, threads=p.plan.model_threads,
                         instances=1, max_batch=d.max_batch, max_delay_ms=d.max_delay_ms, max_queue=d.max_queue,
                         warmup=p.cfg.model.warmup, reject_nonfinite=d.reject_nonfinite,
                         spin_wait=d.spin_wait if p.plan.spin_wait is None else p.plan.spin_wait,  # the stages' cores
                         metrics=repo.metrics)


def swap_model(p, model_cfg: ModelConfig, pipeline_dir: str | None = None) -> dict:
    """Load `model_cfg`'s model beside the running one, check it fits, warm it up, then switch the pipeline's
    scheduler and server to it; a model that fails any step is closed and the running one serves on."""
    t0 = time.perf_counter()
    sessions, served = [], None
    try:
        model = load_model(model_cfg)
        check_fits(p.model, model)
        sessions, _, probe = open_sessions(model, model_cfg, p.plan.workers, p.plan.model_threads,
                                           {model.inputs[0].name: p.preprocess.fed_shape()},
                                           spin_wait=p.plan.spin_wait)
        p.postprocess.check({k: v[0] for k, v in probe.items()})
        if p.served_version is not None:
            served = serve_model(p, model, p.served_version + 1)
    except Exception as e:  # whatever the new file does, the old model keeps serving
        for s in sessions:
            s.close()
        why = str(e) if isinstance(e, EdgepilotError) else f"{type(e).__name__}: {e}"
        return _report(p, _event(p, False, model_cfg.path, why, pipeline_dir=pipeline_dir))
    if p.stopping():
        for s in sessions:
            s.close()
        if served is not None:
            served.retire()
        return {"ok": False, "reason": "the pipeline is stopping"}
    old = p.cfg.model.path
    closed = p.scheduler.swap(sessions)  # between batches: those in flight end on the old sessions
    p.model, p.sessions = model, sessions
    p.cfg.model = model_cfg
    p.stats.model_swapped()
    if served is not None:
        p.server.app.state.repo.put(p.cfg.name, served)  # requests in flight end on the old version
        p.served_version = served.version
    closed.wait(60)
    return _report(p, _event(p, True, model_cfg.path, f"swapped in {Path(model_cfg.path).name} (was "
                                                      f"{Path(old).name}) in {time.perf_counter() - t0:.2f} s",
                             pipeline_dir=pipeline_dir, previous=old))


def _event(p, ok: bool, path, reason: str, **extra) -> dict:
    return {"ok": ok, "model": str(path), "reason": reason, "at": time.time(), **extra}


def _report(p, event: dict) -> dict:
    if event["ok"]:
        log.warning("pipeline %s: %s", p.cfg.name, event["reason"])
    elif not event.get("restart"):
        p.stats.count("model_swap_failures")
        log.error("pipeline %s: model not swapped: %s", p.cfg.name, event["reason"])
    p.last_swap = event
    if p.on_swap is not None:
        try:
            p.on_swap(event)
        except Exception:
            log.exception("reporting a model swap failed")
    return event
