"""Live pipeline statistics: fps, per-stage latency, queue depth, drops and skips — for the CLI, monitor and server."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

from edgepilot.monitor.collectors.inference import InferenceRecorder, default_recorder


class PipelineStats:
    """Thread-safe counters and sliding windows. Every stage reports here; `snapshot()` reads it all at once.

    It also feeds the process-wide inference recorder, so `edgepilot monitor` and /metrics see the runtime."""

    def __init__(self, window: int = 512, fps_window_s: float = 5.0,
                 recorder: InferenceRecorder | None = None) -> None:
        self._lock = threading.Lock()
        self._stage: dict[str, deque[float]] = {}
        self._window = window
        self._fps_window_s = fps_window_s
        self._done: deque[float] = deque()
        self.counters: Counter[str] = Counter()
        self.per_source: dict[str, Counter[str]] = {}
        self.queue_depth = 0
        self.started = time.monotonic()
        self.first_done: float | None = None  # the first and latest completion: fps after start-up
        self.last_done: float | None = None
        self.recorder = recorder or default_recorder()
        self._confidence: deque[float] = deque(maxlen=window)  # top-1 score of each result: the model's certainty

    def stage(self, name: str, seconds: float, n: int = 1) -> None:
        with self._lock:
            q = self._stage.setdefault(name, deque(maxlen=self._window))
            q.extend([seconds] * n)

    def count(self, what: str, source: str | None = None, n: int = 1) -> None:
        with self._lock:
            self.counters[what] += n
            if source is not None:
                self.per_source.setdefault(source, Counter())[what] += n
        if what == "dropped":
            self.recorder.drop(n)

    def inference(self, seconds: float, batch: int, ok: bool = True) -> None:
        """One session.run of `batch` items: its latency is the "infer" stage (per batch)."""
        self.stage("infer", seconds)
        with self._lock:
            self.counters["batches"] += 1
            self.counters["inferred"] += batch if ok else 0
        self.recorder.record(seconds, batch=batch, ok=ok)

    def confidence(self, score: float) -> None:
        with self._lock:
            self._confidence.append(score)

    def model_swapped(self) -> None:
        """A new model serves from now on: the latency and confidence windows start over, so they describe it (a
        batch or two already in flight on the old model may still land in them). Counters keep counting."""
        with self._lock:
            self._stage.pop("infer", None)
            self._confidence.clear()
            self.counters["model_swaps"] += 1

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth = depth
        self.recorder.set_queue_depth(depth)

    def completed(self, n: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self.counters["completed"] += n
            self._done.extend([now] * n)
            self.first_done = self.first_done or now
            self.last_done = now
            while self._done and now - self._done[0] > self._fps_window_s:
                self._done.popleft()

    def snapshot(self) -> dict:
        now = time.monotonic()
        with self._lock:
            while self._done and now - self._done[0] > self._fps_window_s:
                self._done.popleft()
            span = min(self._fps_window_s, now - self.started)
            stages = {name: _percentiles(q) for name, q in self._stage.items() if q}
            elapsed = now - self.started
            return {
                "uptime_s": round(elapsed, 3),
                "fps": round(len(self._done) / span, 3) if span > 0 else 0.0,
                "fps_overall": round(self.counters["completed"] / elapsed, 3) if elapsed > 0 else 0.0,
                "fps_after_first": round((self.counters["completed"] - 1) / (self.last_done - self.first_done), 3)
                if self.last_done and self.last_done > self.first_done else 0.0,
                "queue_depth": self.queue_depth,
                "counters": dict(self.counters),
                "sources": {k: dict(v) for k, v in self.per_source.items()},
                "stages_ms": stages,
                "confidence": {"mean": round(float(np.mean(self._confidence)), 6), "n": len(self._confidence)}
                if self._confidence else {"mean": None, "n": 0},
            }


def _percentiles(q: deque[float]) -> dict[str, float]:
    a = np.asarray(q) * 1e3
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
            "mean": round(float(a.mean()), 3),
            "n": len(a)}
