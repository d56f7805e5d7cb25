"""Inference metrics fed by the runtime or server: a thread-safe recorder and the collector that drains it."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, reading


@dataclass(frozen=True)
class InferenceWindow:
    seconds: float
    latencies_ms: tuple[float, ...]
    samples: int
    errors: int
    drops: int
    queue_depth: int | None
    total: int


class InferenceRecorder:
    """What the runtime calls after each inference; cheap and safe from any thread.

    >>> rec = default_recorder()
    >>> t0 = time.perf_counter(); session.run(feeds); rec.record(time.perf_counter() - t0, batch=1)
    """

    def __init__(self, max_window: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._max = max_window  # bounds memory if nothing drains the recorder
        self._samples = self._errors = self._drops = self._total = 0
        self._queue: int | None = None
        self._since = time.monotonic()
        self.used = False

    def record(self, latency_s: float, *, batch: int = 1, ok: bool = True) -> None:
        with self._lock:
            self.used = True
            self._total += 1
            if not ok:
                self._errors += 1
                return
            if len(self._latencies) < self._max:
                self._latencies.append(latency_s * 1e3)
            self._samples += batch

    def drop(self, n: int = 1) -> None:
        """Frames or requests discarded before inference (a full queue, a late frame)."""
        with self._lock:
            self.used = True
            self._drops += n

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self.used = True
            self._queue = depth

    def drain(self) -> InferenceWindow:
        """Everything since the last drain, and a fresh window."""
        now = time.monotonic()
        with self._lock:
            w = InferenceWindow(now - self._since, tuple(self._latencies), self._samples, self._errors, self._drops,
                                self._queue, self._total)
            self._latencies, self._samples, self._errors, self._drops = [], 0, 0, 0
            self._since = now
        return w


_DEFAULT = InferenceRecorder()


def default_recorder() -> InferenceRecorder:
    """The process-wide recorder that the runtime feeds and `edgepilot monitor` reads."""
    return _DEFAULT


_IDLE = ("no runtime in this process has recorded an inference yet (the runtime and server feed "
         "edgepilot.monitor.collectors.inference.default_recorder())")


class InferenceCollector(Collector):
    name = "inference"
    panels = ("inference",)
    retry_s = 0.0  # the runtime may start recording at any moment; asking the recorder costs nothing

    def __init__(self, recorder: InferenceRecorder | None = None) -> None:
        self.recorder = recorder or default_recorder()

    def probe(self) -> tuple[bool, str]:
        if not self.recorder.used:
            return False, _IDLE
        return True, "the runtime's inference recorder"

    def collect(self) -> list[Reading]:
        if not self.recorder.used:
            raise SourceUnavailable(_IDLE)
        w = self.recorder.drain()
        src = "runtime"
        out = [reading("inference_total", w.total, "count", src),
               reading("inference_drops", w.drops, "count", src),
               reading("inference_errors", w.errors, "count", src)]
        if w.seconds > 0:
            out.append(reading("inference_fps", w.samples / w.seconds, "1/s", src))
        if w.latencies_ms:
            lat = np.asarray(w.latencies_ms)
            out += [reading("inference_latency_ms", float(lat.mean()), "ms", src),
                    reading("inference_latency_p95_ms", float(np.percentile(lat, 95)), "ms", src),
                    reading("inference_latency_max_ms", float(lat.max()), "ms", src)]
        if w.queue_depth is not None:
            out.append(reading("inference_queue_depth", w.queue_depth, "count", src))
        return out
