"""Time a Session: warm-up, N runs or a time budget, percentiles, throughput at a batch and concurrency."""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
import psutil
from pydantic import BaseModel

from edgepilot.engines.base import Session
from edgepilot.errors import ConfigError, InputError
from edgepilot.model import TensorSpec
from edgepilot.shapes import resolve_shapes


class LatencyStats(BaseModel):
    """Per-call latency in milliseconds; throughput in samples per second over the whole run."""

    runs: int
    warmup: int
    batch: int
    concurrency: int
    wall_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_sps: float
    shapes: dict[str, list[int]] = {}  # the input shapes timed (empty in results written before they were kept)

    @classmethod
    def from_samples(cls, samples_s: list[float], *, warmup: int, batch: int, concurrency: int,
                     wall_s: float, shapes: dict[str, list[int]] | None = None) -> LatencyStats:
        ms = np.asarray(samples_s) * 1e3
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(
            runs=len(ms), warmup=warmup, batch=batch, concurrency=concurrency, wall_s=wall_s,
            p50_ms=float(p50), p90_ms=float(p90), p95_ms=float(p95), p99_ms=float(p99), mean_ms=float(ms.mean()),
            std_ms=float(ms.std()), min_ms=float(ms.min()), max_ms=float(ms.max()),
            throughput_sps=len(ms) * batch / wall_s if wall_s > 0 else 0.0, shapes=shapes or {},
        )


FEED_BUDGET_ENV = "EDGEPILOT_MAX_FEED_MB"


def feed_budget_bytes() -> int:
    """The most the inputs of one call may take: EDGEPILOT_MAX_FEED_MB, else a quarter of the available memory
    (the model's own activations need the rest)."""
    if os.environ.get(FEED_BUDGET_ENV):
        try:
            return int(float(os.environ[FEED_BUDGET_ENV]) * (1 << 20))
        except ValueError:
            raise ConfigError(f"{FEED_BUDGET_ENV}={os.environ[FEED_BUDGET_ENV]!r} is not a number of MB") from None
    return psutil.virtual_memory().available // 4


def check_feed_budget(specs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The bytes the inputs take at `shapes`, refused before anything is allocated when above the budget."""
    need = sum(math.prod(int(d) for d in shapes[s.name]) * s.np_dtype.itemsize for s in specs)
    budget = feed_budget_bytes()
    if need > budget:
        shown = ", ".join(f"{s.name} {'x'.join(map(str, shapes[s.name]))}" for s in specs)
        raise InputError(f"the inputs ({shown}) need {need / (1 << 20):,.0f} MB, above the budget of "
                         f"{budget / (1 << 20):,.0f} MB",
                         hint=f"give a smaller --shape or --batch, or raise the budget with {FEED_BUDGET_ENV}")
    return need


def synthetic_feeds(specs: list[TensorSpec], batch: int | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded synthetic inputs of the right shape and dtype, for timing only (never for accuracy).

    Shapes are `resolve_shapes(specs, shapes, batch)`: an unknown input name, a batch the model cannot
    take and a shape whose batch differs from `batch` are errors, never silently replaced.
    """
    rng = np.random.default_rng(seed)
    resolved = resolve_shapes(specs, shapes or {}, batch)
    check_feed_budget(specs, resolved)
    feeds = {}
    for spec in specs:
        shape = resolved[spec.name]
        dt = spec.np_dtype
        if dt.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            feeds[spec.name] = rng.integers(max(info.min, -128), min(info.max, 127), shape, endpoint=True).astype(dt)
        elif dt.kind == "b":
            feeds[spec.name] = rng.integers(0, 1, shape, endpoint=True).astype(bool)
        else:
            raise ConfigError(f"cannot make synthetic data for input {spec.name!r} of dtype {spec.dtype}")
    return feeds


def measure_latency(session_factory: Callable[[], Session], feeds: Mapping[str, np.ndarray], *, batch: int,
                    warmup: int = 10, runs: int | None = None, seconds: float | None = None,
                    concurrency: int = 1) -> LatencyStats:
    """Run `feeds` through sessions until `runs` calls or `seconds` have passed, on `concurrency` threads.

    Each thread gets its own session from the factory (interpreters such as LiteRT are not
    thread-safe), so concurrency measures what a server with that many workers would see.
    """
    if runs is None and seconds is None:
        runs = 100
    if (runs is not None and runs < 1) or (seconds is not None and seconds <= 0) or concurrency < 1:
        raise ConfigError("runs, seconds and concurrency must be positive")
    sessions = [session_factory() for _ in range(concurrency)]
    try:
        for s in sessions:
            for _ in range(max(warmup, 0)):
                s.run(feeds)
        samples: list[list[float]] = [[] for _ in sessions]
        budget = {"left": runs if runs is not None else -1}
        lock = threading.Lock()
        start = time.perf_counter()  # the budget counts from here, as does wall_s
        deadline = start + seconds if seconds is not None else float("inf")
        errors: list[BaseException] = []

        def take() -> bool:
            if time.perf_counter() >= deadline:
                return False
            if budget["left"] < 0:
                return True
            with lock:
                if budget["left"] == 0:
                    return False
                budget["left"] -= 1
                return True

        def worker(i: int) -> None:
            run, out, clock = sessions[i].run, samples[i], time.perf_counter
            try:
                while take():
                    t0 = clock()
                    run(feeds)
                    out.append(clock() - t0)
            except BaseException as e:  # reported to the caller after the join
                errors.append(e)

        if concurrency == 1:
            worker(0)
        else:
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
    finally:
        for s in sessions:
            s.close()
    flat = [x for per in samples for x in per]
    return LatencyStats.from_samples(flat, warmup=warmup, batch=batch, concurrency=concurrency, wall_s=wall,
                                     shapes={k: list(np.shape(v)) for k, v in feeds.items()})
