"""Inference scheduler: a bounded queue, dynamic batching and worker threads sized so the cores are not oversubscribed.

Live items (camera, stream, MQTT) displace the oldest live item when the queue is full — a late frame is worth less
than a fresh one; file items wait for room instead (back-pressure), so no frame of a video is lost. Workers take
batches in queue order and results leave in that same order, whatever worker finished first. A batch runs as one
inference per input shape among its samples (a model with dynamic dimensions takes requests of several sizes).
"""
from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepilot.engines.base import Session
from edgepilot.runtime.item import Item
from edgepilot.runtime.stats import PipelineStats

log = logging.getLogger(__name__)


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch: int = Field(1, ge=1, description="largest batch one inference takes (capped by a fixed model batch)")
    max_delay_ms: float = Field(2.0, ge=0, description="how long a partial batch waits for more items")
    queue_size: int = Field(8, ge=1, description="items waiting for inference")
    workers: int | Literal["auto"] = Field("auto", description="inference threads, one session each")
    model_threads: int | Literal["auto"] = Field("auto", description="threads inside each session")
    spin_wait: bool | Literal["auto"] = Field("auto", description="idle model threads spin (onnxruntime); auto: "
                                                                  "not when the stages fill every core")


@dataclass(frozen=True)
class ThreadPlan:
    cores: int
    decode_threads: int
    workers: int
    model_threads: int
    notes: tuple[str, ...] = ()
    spin_wait: bool | None = None  # None: the engine's default
    ffmpeg_threads: int = 1  # each decoder's FFmpeg threads (`decode_threads: auto`): 1, plus the spare cores

    def describe(self) -> str:
        spin = {None: "engine default", True: "on", False: "off"}[self.spin_wait]
        return (f"{self.workers} worker(s) x {self.model_threads} model thread(s) + {self.decode_threads} "
                f"decoder(s) x {self.ffmpeg_threads} FFmpeg thread(s) on {self.cores} core(s), spin-wait {spin}")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_threads(cfg: SchedulerConfig, decode_threads: int, cores: int | None = None) -> ThreadPlan:
    """workers x model_threads + decode threads <= cores (at least one of each). Explicit settings that would
    oversubscribe are reduced, with a note saying so."""
    cores = cores or available_cores()
    budget = max(1, cores - decode_threads)
    notes = []
    workers = 1 if cfg.workers == "auto" else cfg.workers
    threads = max(1, budget // workers) if cfg.model_threads == "auto" else cfg.model_threads
    if workers * threads > budget:
        notes.append(f"{workers} worker(s) x {threads} thread(s) + {decode_threads} decode thread(s) would exceed "
                     f"{cores} core(s)")
        workers = min(workers, budget)
        threads = max(1, budget // workers)
        notes.append(f"using {workers} worker(s) x {threads} thread(s)")
    spin = cfg.spin_wait if cfg.spin_wait != "auto" else (False if workers * threads + decode_threads >= cores
                                                          else None)
    # FFmpeg's frame threads cost CPU (15-40 % more per frame here) and only pay on cores nothing else needs
    spare = max(0, cores - workers * threads - decode_threads)
    ffmpeg = 1 + spare // max(1, decode_threads)
    return ThreadPlan(cores, decode_threads, workers, threads, tuple(notes), spin, ffmpeg)


def limit_library_threads(plan: ThreadPlan) -> None:
    """When the plan fills every core, OpenCV runs single-threaded (process-wide): its pool would only add threads
    to wake on every colour conversion and resize, on cores the stages already use. Results are the same."""
    if plan.workers * plan.model_threads + plan.decode_threads < plan.cores:
        return
    try:
        import cv2
    except ImportError:  # a sensor pipeline needs no OpenCV
        return
    cv2.setNumThreads(1)


class ItemQueue:
    def __init__(self, size: int, stats: PipelineStats) -> None:
        self._items: deque[Item] = deque()
        self._size = size
        self._cond = threading.Condition()
        self._closed = False
        self.stats = stats

    def put(self, item: Item) -> None:
        with self._cond:
            while len(self._items) >= self._size and not self._closed:
                if item.live and self._drop_oldest_live():
                    break
                self._cond.wait(0.5)
            if self._closed:
                return
            self._items.append(item)
            self.stats.set_queue_depth(len(self._items))
            self._cond.notify_all()

    def offer(self, items: list[Item]) -> bool:
        """All of `items` queued at once if there is room for them now; False (nothing queued) otherwise."""
        with self._cond:
            if self._closed or len(self._items) + len(items) > self._size:
                return False
            self._items.extend(items)
            self.stats.set_queue_depth(len(self._items))
            self._cond.notify_all()
            return True

    def _drop_oldest_live(self) -> bool:
        for i, old in enumerate(self._items):
            if old.live:
                del self._items[i]
                self.stats.count("dropped", old.source)
                old.done()
                return True
        return False  # only file items queued: the live item waits like they do

    def take(self, max_batch: int, max_delay_s: float) -> list[Item] | None:
        """Up to max_batch items: waits for the first, then at most max_delay_s for the rest. None when closed
        and empty."""
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            batch = [self._items.popleft()]
            deadline = time.monotonic() + max_delay_s
            while len(batch) < max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            self.stats.set_queue_depth(len(self._items))
            self._cond.notify_all()
            return batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _SessionSet:
    """One model's sessions (one per worker) and the batches running on them: closed once retired and idle."""

    def __init__(self, sessions: list[Session]) -> None:
        self.sessions = sessions
        self.busy = 0
        self.retired = False
        self.closed = threading.Event()

    def close(self) -> None:
        for s in self.sessions:
            try:
                s.close()
            except Exception as e:  # a session that fails to close must not stop the swap or a worker
                log.warning("closing a retired session: %s", e)
        self.closed.set()


class Scheduler:
    """Runs batches on one session per worker and hands each item to `emit` in queue order. Workers do nothing but
    inference: post-processing happens downstream, on another core, while the next batch runs.

    `swap` replaces the sessions between batches: a batch already taken finishes on the sessions it started on,
    which are closed once the last such batch has ended."""

    def __init__(self, sessions: list[Session], cfg: SchedulerConfig, stats: PipelineStats,
                 emit: Callable[[Item], None], *, whole: bool = False) -> None:
        """`whole`: the model has no batch dimension; an item's tensor is a whole request's feeds (a dict), run as
        it is, one at a time, and its outputs are the model's, not split."""
        self.cfg, self.stats, self.whole = cfg, stats, whole
        self._live = _SessionSet(sessions)
        self._sessions_lock = threading.Lock()
        self.emit = emit
        spec = sessions[0].inputs[0]
        self.input_name = spec.name
        fixed = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
        self.fixed_batch = None if whole else fixed  # a whole request is never padded
        self.max_batch = 1 if whole else min(cfg.max_batch, fixed) if fixed else cfg.max_batch
        self.queue = ItemQueue(cfg.queue_size, stats)
        self._take_lock = threading.Lock()
        self._ticket = 0
        self._next_out = 0
        self._ready: list[tuple[int, Item]] = []
        self._out_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"infer-{i}", daemon=True)
                         for i in range(len(sessions))]

    @property
    def sessions(self) -> list[Session]:
        """The sessions new batches run on."""
        return self._live.sessions

    def swap(self, sessions: list[Session]) -> threading.Event:
        """New batches run on `sessions` (one per worker, the same input); returns an event set once the old
        sessions, which this scheduler then owns, have finished their batches and are closed."""
        if len(sessions) != len(self._threads):
            raise ValueError(f"{len(sessions)} session(s) for {len(self._threads)} worker(s)")
        if sessions[0].inputs[0].name != self.input_name:
            raise ValueError(f"the new sessions take {sessions[0].inputs[0].name!r}, not {self.input_name!r}")
        with self._sessions_lock:
            old, self._live = self._live, _SessionSet(sessions)
            old.retired = True
            idle = old.busy == 0
        if idle:
            old.close()
        return old.closed

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, item: Item) -> None:
        self.queue.put(item)

    def offer(self, items: list[Item]) -> bool:
        """Queue every item now, without waiting; False when the queue has no room for all of them."""
        return self.queue.offer(items)

    def close(self, timeout: float | None = None) -> None:
        """No more items: finish what is queued, then stop the workers."""
        self.queue.close()
        for t in self._threads:
            t.join(timeout)

    def _work(self, worker: int) -> None:
        while True:
            with self._take_lock:  # tickets follow queue order
                batch = self.queue.take(self.max_batch, self.cfg.max_delay_ms / 1e3)
                if batch is None:
                    return
                first = self._ticket
                self._ticket += len(batch)
                with self._sessions_lock:  # the batch runs on the sessions live when it was taken
                    used = self._live
                    used.busy += 1
            try:
                self._infer(used.sessions[worker], batch)
            finally:
                with self._sessions_lock:
                    used.busy -= 1
                    idle = used.retired and used.busy == 0
                if idle:
                    used.close()
            self._release(first, batch)

    def _infer(self, session: Session, batch: list[Item]) -> None:
        for it in batch:
            if it.error is None and it.tensor is None:
                it.error = "not preprocessed"
        groups: dict[tuple, list[Item]] = {}  # a model with dynamic dimensions: only samples of one shape stack
        for it in batch:
            if it.error is None:
                groups.setdefault(_signature(it.tensor), []).append(it)
        for ready in groups.values():
            try:
                self._run(session, ready)
            except Exception as e:  # a bug here must not kill the worker: nothing after this batch would leave
                log.exception("inference of %d item(s) failed", len(ready))
                for it in ready:
                    it.error = f"inference failed: {type(e).__name__}: {e}"
                    self.stats.count("errors", it.source)

    def _run(self, session: Session, ready: list[Item]) -> None:
        feeds = ready[0].tensor if self.whole else self._stack([it.tensor for it in ready])
        n = len(ready)
        if self.fixed_batch and n < self.fixed_batch:  # a fixed-batch model takes exactly its batch: pad with zeros
            feeds = {k: np.concatenate([x, np.zeros((self.fixed_batch - n,) + x.shape[1:], x.dtype)])
                     for k, x in feeds.items()}
        t0 = time.perf_counter()
        try:
            outputs = session.run(feeds)
        except Exception as e:  # one bad batch never stops the pipeline
            dt = time.perf_counter() - t0
            self.stats.inference(dt, n, ok=False)
            log.warning("inference failed for %d item(s): %s", n, e)
            for it in ready:  # counted here, once per item; delivery does not count them again
                it.error = f"inference failed: {e}"
                self.stats.count("errors", it.source)
            return
        dt = time.perf_counter() - t0
        self.stats.inference(dt, n)
        fed = len(next(iter(feeds.values())))
        astray = [k for k, v in outputs.items() if np.ndim(v) == 0 or len(v) != fed]
        if self.whole or (astray and n == 1 and fed == 1):  # one sample: the model's outputs are its own, whole
            ready[0].outputs, ready[0].whole_outputs = outputs, True
            ready[0].timings["infer"] = dt
            return
        if astray and n > 1:  # no sample axis to split by: each alone, and no more batches
            if self.max_batch > 1:
                log.warning("output %r %s does not follow the batch of %d: the model has no batch dimension; "
                            "batching is off", astray[0], list(np.shape(outputs[astray[0]])), fed)
                self.max_batch = 1
            for it in ready:
                self._run(session, [it])
            return
        if astray:  # one sample padded to a fixed batch the outputs do not follow: nothing of it is its own
            for it in ready:
                it.error = f"output {astray[0]!r} {list(np.shape(outputs[astray[0]]))} does not follow the batch"
                self.stats.count("errors", it.source)
            return
        for i, it in enumerate(ready):
            it.outputs = {k: v[i] for k, v in outputs.items()}
            it.timings["infer"] = dt / n

    def _stack(self, tensors: list) -> dict[str, np.ndarray]:
        """One batched feed per input: an item's tensor is a sample of the first input, or (a model with several
        inputs, as the server feeds) a dict of samples by input name. A batch of one is a view, not a copy (the
        tensor may live in a decoder process's shared memory)."""
        def batch(samples: list[np.ndarray]) -> np.ndarray:
            return samples[0][None] if len(samples) == 1 else np.stack(samples)

        if isinstance(tensors[0], dict):
            return {name: batch([t[name] for t in tensors]) for name in tensors[0]}
        return {self.input_name: batch(tensors)}

    def _release(self, first: int, batch: list[Item]) -> None:
        with self._out_lock:
            for i, it in enumerate(batch):
                heapq.heappush(self._ready, (first + i, it))
            while self._ready and self._ready[0][0] == self._next_out:
                _, it = heapq.heappop(self._ready)
                self._next_out += 1
                self.emit(it)


def _signature(tensor) -> tuple:
    """What samples must share to be stacked into one batch: each input's shape and dtype."""
    if isinstance(tensor, dict):
        return tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in tensor.items())
    return (np.shape(tensor), np.asarray(tensor).dtype.str)
