"""One loaded model version: its sessions (instances), warm-up, the runtime's batching scheduler, statistics, drain."""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgepilot.engines import engine_for, open_session
from edgepilot.engines.base import Session, default_threads
from edgepilot.errors import ConfigError, EdgepilotError, InputError, NotFoundError, RuntimeFailure, UnavailableError
from edgepilot.evaluate.latency import synthetic_feeds
from edgepilot.model import Model
from edgepilot.runtime.item import Item
from edgepilot.runtime.scheduler import Scheduler, SchedulerConfig
from edgepilot.runtime.stats import PipelineStats
from edgepilot.serve.tensors import validate_feeds

log = logging.getLogger(__name__)
# Under this, a one-sample inference on the event loop beats the hop to a worker thread and back, even though the
# worker would let the loop parse other requests meanwhile (ppocr-cls-v2, 0.6 ms, at 1 and 4 clients); with idle
# threads sleeping only under SPIN_MIN_S: each inline inference then starts by waking them
INLINE_MAX_S = 1.5e-3
SPIN_MIN_S = 250e-6  # a model this fast gains nothing from onnxruntime's idle threads spinning between its requests
INLINE_SLOW_S = 5e-3  # an inline inference this slow stops auto inlining: it held up every other request


@dataclass
class Timing:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStats:
    """What the statistics extension reports, all measured here."""

    success: Timing = field(default_factory=Timing)
    fail: Timing = field(default_factory=Timing)
    queue: Timing = field(default_factory=Timing)
    compute_input: Timing = field(default_factory=Timing)
    compute_infer: Timing = field(default_factory=Timing)
    compute_output: Timing = field(default_factory=Timing)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Timing] = field(default_factory=dict)


class _BatchStats(PipelineStats):
    """The scheduler's statistics, plus one observation per executed batch for this version's counters."""

    def __init__(self, served: ServedVersion) -> None:
        super().__init__()
        self.served = served

    def inference(self, seconds: float, batch: int, ok: bool = True) -> None:
        super().inference(seconds, batch, ok)
        self.served.executed(seconds, batch)


class _Request:
    """Collects the items of one request as the scheduler emits them (in a worker thread)."""

    def __init__(self, n: int) -> None:
        self.items: list[Item | None] = [None] * n
        self.left = n
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.submitted = time.perf_counter()


class _Serialized:
    """A session that runs one inference at a time: inline requests on the event loop and the scheduler's worker
    share it, and not every runtime's session may be run from two threads at once."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._lock = threading.Lock()

    def __getattr__(self, name: str):  # inputs, outputs, threads, precision: the session's own
        return getattr(self.session, name)

    def run(self, feeds, **kwargs) -> dict[str, np.ndarray]:
        with self._lock:
            return self.session.run(feeds, **kwargs)

    def close(self) -> None:
        self.session.close()


class ServedVersion:
    """A model version ready to serve: `await infer(feeds)` batches concurrent requests through the scheduler."""

    def __init__(self, name: str, version: int, model: Model, *, engine: str | None, threads: int | None,
                 instances: int, max_batch: int, max_delay_ms: float, max_queue: int, warmup: int,
                 reject_nonfinite: bool, spin_wait: bool | str = "auto", inline: bool | str = "auto",
                 metrics=None) -> None:
        self.name, self.version, self.model = name, version, model
        unbatched = [s.name for s in model.inputs if not s.shape]
        if unbatched:
            raise ConfigError(f"{model.path}: input {unbatched[0]!r} has no first (batch) dimension",
                              hint="serve models whose inputs have a known rank of 1 or more")
        self.reject_nonfinite = reject_nonfinite
        self.metrics = metrics
        self.stats = VersionStats()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._retired = False
        threads = threads or max(1, default_threads() // instances)
        self.engine = engine_for(model, engine).name
        # spin_wait auto: onnxruntime's default (idle threads spin: the next request finds them awake), unless the
        # model's threads take every core and one inference is shorter than SPIN_MIN_S: threads spinning between
        # such requests starve the event loop that parses them, and a tiny model runs no faster for it
        spin_auto = spin_wait == "auto" and instances * threads >= default_threads() and self.engine == "onnxruntime"
        self.spin_wait = None if spin_wait == "auto" else spin_wait  # None: the engine's default
        self.sessions: list[_Serialized] = []
        try:
            self._open(model, instances, threads)
            one_sample_s = functools.cache(lambda: self._time_one_sample(self.sessions[0]))  # once, if asked
            if spin_auto and one_sample_s() < SPIN_MIN_S:
                self._close_sessions()
                self.sessions, self.spin_wait = [], False
                self._open(model, instances, threads)
            follows, probed = (True, False) if max_batch == 0 else self._follows_batch(self.sessions[0])
            for i, s in enumerate(self.sessions):
                self._warm_up(s, warmup - (i == 0 and probed))  # the probe was the first instance's first run
            self.inputs, self.outputs = self.sessions[0].inputs, self.sessions[0].outputs
            self.whole = max_batch == 0 or not follows
            if self.whole and max_batch:
                log.warning("%s v%d: its outputs do not follow the inputs' first dimension: no batch dimension, "
                            "each request runs whole (max_batch: 0)", name, version)
            cfg = SchedulerConfig(max_batch=max(1, max_batch), max_delay_ms=max_delay_ms, queue_size=max_queue)
            self.scheduler = Scheduler(self.sessions, cfg, _BatchStats(self), self._emit, whole=self.whole)
            self.inline, self.inline_auto = self._inline(inline, one_sample_s), inline == "auto"
        except Exception:
            self._close_sessions()
            raise
        self.scheduler.start()
        log.info("%s v%d: %s, %d instance(s) x %d thread(s), max batch %d%s%s", name, version, self.engine,
                 instances, threads, self.scheduler.max_batch,
                 ", idle threads sleep" if self.spin_wait is False else "",
                 ", one-sample requests inline" if self.inline else "")

    def _open(self, model: Model, instances: int, threads: int) -> None:
        """The instances' sessions into self.sessions (on a failure, __init__ closes those opened)."""
        for _ in range(instances):
            self.sessions.append(_Serialized(open_session(model, self.engine, threads=threads,
                                                          spin_wait=self.spin_wait)))

    def _inline(self, wanted: bool | str, one_sample_s: Callable[[], float]) -> bool:
        """Whether one-sample requests run on the event loop itself rather than through the scheduler's worker:
        the hop there and back (a queue, a thread wake-up, a future) costs more than a fast model's inference
        gains from running beside the event loop. Only without batching, on one instance; auto: inputs of a fixed
        size (past the batch dimension) and a one-sample inference under INLINE_MAX_S (SPIN_MIN_S when the idle
        threads sleep)."""
        unbatched = self.scheduler.max_batch == 1 and len(self.sessions) == 1
        if wanted is True and not unbatched:
            raise ConfigError(f"{self.name}: inline needs max_batch 1 and one instance",
                              hint="inline skips the scheduler that batches samples and spreads them over instances")
        if wanted != "auto":
            return wanted
        fixed = all(isinstance(d, int) and d > 0 for spec in self.inputs for d in spec.shape[1:])
        return unbatched and fixed and one_sample_s() < (SPIN_MIN_S if self.spin_wait is False else INLINE_MAX_S)

    @staticmethod
    def _follows_batch(session: _Serialized) -> tuple[bool, bool]:
        """Whether every output's first dimension is the inputs' (their batch), on synthetic inputs, and whether
        that ran: a model with detections of its own as outputs ([K, 6] after an NMS) has none to split by sample
        (when K happens to equal the batch here, the scheduler finds it on a later run)."""
        try:
            feeds = synthetic_feeds(session.inputs)  # a fixed first dimension as it is, else 1
            outputs = session.run(feeds)
        except Exception:  # noqa: BLE001 — a model that needs real inputs: the scheduler checks every run instead
            return True, False
        fed = len(next(iter(feeds.values())))
        return all(np.ndim(v) and len(v) == fed for v in outputs.values()), True

    @staticmethod
    def _time_one_sample(session: _Serialized) -> float:
        """The median of a few timed one-sample inferences (one, for a slow model) on synthetic inputs."""
        try:
            feeds = synthetic_feeds(session.inputs, batch=1)
            session.run(feeds)  # the first run pays for lazy initialisation
            times = []
            while len(times) < 5 and (not times or times[-1] < 4 * INLINE_MAX_S):
                t0 = time.perf_counter()
                session.run(feeds)
                times.append(time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 — a model that needs real inputs goes through the scheduler
            return float("inf")
        return float(np.median(times))

    @property
    def platform(self) -> str:
        return f"{self.engine}_{self.model.format.value}"

    def _warm_up(self, session: _Serialized, runs: int) -> None:
        """Synthetic inputs through each instance so the first request does not pay for lazy initialisation."""
        if runs <= 0:
            return
        try:
            feeds = synthetic_feeds(session.inputs, batch=1)
        except EdgepilotError as e:
            log.warning("%s v%d: no warm-up (%s)", self.name, self.version, e.message)
            return
        for _ in range(runs):
            session.run(feeds)

    async def infer(self, feeds: dict[str, np.ndarray], timeout_s: float) -> tuple[dict[str, np.ndarray], float]:
        """Validated feeds in, outputs out; also returns the request's queue seconds. Raises EdgepilotError."""
        t0 = time.perf_counter()
        try:
            return await self._infer(feeds, timeout_s, t0)
        except Exception:
            with self._lock:
                self.stats.fail.add(time.perf_counter() - t0)
            raise

    async def _infer(self, feeds: dict[str, np.ndarray], timeout_s: float, t0: float):
        feeds = validate_feeds(self.inputs, feeds, reject_nonfinite=self.reject_nonfinite, whole=self.whole)
        n = 1 if self.whole else next(iter(feeds.values())).shape[0]
        if n == 0:
            raise InputError("an empty batch (first dimension 0)")
        self.stats.compute_input.add(time.perf_counter() - t0)
        if n == 1 and self.inline:
            return self._run_inline(feeds, t0)
        req = _Request(n)  # one item per sample: the scheduler batches samples of concurrent requests together
        items = [Item(source=self.name, seq=0, ts=time.time(), tensor=feeds, meta={"request": req})] if self.whole \
            else [Item(source=self.name, seq=i, ts=time.time(), tensor={k: v[i] for k, v in feeds.items()},
                       meta={"request": req}) for i in range(n)]
        try:
            if not self.scheduler.offer(items):  # a full queue blocks a thread, not the event loop
                await asyncio.to_thread(self._submit, items)
            outputs = await asyncio.wait_for(asyncio.wrap_future(req.future), timeout_s)
        except asyncio.TimeoutError:
            raise UnavailableError(f"{self.name} v{self.version}: no result within {timeout_s:g} s",
                                   hint="the server is overloaded; retry later") from None
        compute = sum(it.timings.get("infer", 0.0) for it in items)
        return outputs, self._account(t0, req.submitted, compute, n)

    def _run_inline(self, feeds: dict[str, np.ndarray], t0: float) -> tuple[dict[str, np.ndarray], float]:
        t1 = time.perf_counter()
        try:
            outputs = self.sessions[0].run(feeds)
        except Exception as e:
            self.executed(time.perf_counter() - t1, 1)
            raise RuntimeFailure(f"{self.name} v{self.version}: inference failed: {e}") from e
        compute = time.perf_counter() - t1
        self.executed(compute, 1)
        if compute > INLINE_SLOW_S and self.inline_auto:  # this input is slow: the event loop must not wait on it
            self.inline = False
            log.warning("%s v%d: an inference took %.1f ms on the event loop; requests go through the scheduler "
                        "from now on", self.name, self.version, compute * 1e3)
        return outputs, self._account(t0, t1, compute, 1)

    def _submit(self, items: list[Item]) -> None:
        for it in items:
            self.scheduler.submit(it)

    def _emit(self, item: Item) -> None:
        req: _Request = item.meta.pop("request")
        req.items[item.seq] = item
        req.left -= 1
        if req.left:
            return
        try:  # in a scheduler worker: nothing may escape, or the worker dies
            failed = next((it.error for it in req.items if it.error), None)
            if failed:
                req.future.set_exception(RuntimeFailure(f"{self.name} v{self.version}: {failed}"))
            elif len(req.items) == 1 and req.items[0].whole_outputs:  # as the model gave them
                req.future.set_result(req.items[0].outputs)
            elif any(it.whole_outputs for it in req.items):  # no sample axis to stack them on
                req.future.set_exception(InputError(
                    f"{self.name} v{self.version}: the model's outputs do not follow the batch dimension",
                    hint="send one sample per request, or serve the model with max_batch: 0"))
            else:
                req.future.set_result({k: np.stack([it.outputs[k] for it in req.items]) for k in req.items[0].outputs})
        except concurrent.futures.InvalidStateError:
            pass  # the request timed out and was cancelled: nobody waits for this result
        except Exception as e:
            log.exception("%s v%d: cannot assemble a result", self.name, self.version)
            req.future.set_exception(RuntimeFailure(f"{self.name} v{self.version}: cannot assemble the result: {e}"))

    def _account(self, t0: float, submitted: float, compute: float, samples: int) -> float:
        """Statistics of a request received at t0, handed to inference at `submitted`; returns its queue seconds."""
        now = time.perf_counter()
        waited = max(0.0, now - submitted - compute)
        with self._lock:
            s = self.stats
            s.success.add(now - t0)
            s.queue.add(waited)
            s.compute_infer.add(compute)
            s.inference_count += samples
            s.last_inference_ms = int(time.time() * 1e3)
        if self.metrics is not None:
            self.metrics.observe_compute(self.name, self.version, waited, compute)
        return waited

    def encoded(self, seconds: float) -> None:
        with self._lock:
            self.stats.compute_output.add(seconds)

    def executed(self, seconds: float, batch: int) -> None:
        with self._lock:
            self.stats.execution_count += 1
            self.stats.batches.setdefault(batch, Timing()).add(seconds)
        if self.metrics is not None:
            self.metrics.observe_batch(self.name, self.version, batch)

    def acquire(self) -> None:
        """One more request in flight (Repository.use holds it for the request)."""
        with self._lock:
            if self._retired:
                raise NotFoundError(f"model {self.name!r} version {self.version} was just unloaded",
                                    hint="retry: the request goes to the version now served")
            self._inflight += 1

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def retire(self, timeout_s: float = 60.0) -> None:
        """Take no new requests, let those in flight finish, then stop the workers and free the sessions."""
        with self._lock:
            self._retired = True
            self._idle.wait_for(lambda: self._inflight == 0, timeout_s)
        self.scheduler.close(timeout_s)
        self._close_sessions()

    def _close_sessions(self) -> None:
        for s in self.sessions:
            s.close()
