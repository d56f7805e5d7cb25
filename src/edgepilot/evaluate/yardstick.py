"""The host's fp32 matrix-product rate: the yardstick board latency estimates are scaled by."""
from __future__ import annotations

import os
import time
from contextlib import nullcontext

import numpy as np
import psutil
from pydantic import BaseModel

from edgepilot.engines.base import default_threads

SIZE = 1024  # 3 × 4 MiB operands: past L2, and 2 GFLOP per product leaves thread start-up far behind
WARMUP = 2
MIN_REPEATS, MAX_REPEATS, BUDGET_S = 5, 150, 1.5
QUIET = 0.1  # a host is quiet while others take less than this share of its CPU time


class Yardstick(BaseModel):
    gflops: float  # best of the repeats: the rate the host reaches when nothing else gets in the way
    threads: int
    method: str  # what was multiplied, how often, how the threads were set
    spread: float  # (median − best) / median over the repeats: how noisy this host was during the run
    busy: float | None = None  # share of the host's CPU time others took meanwhile (steal included)

    def describe(self) -> str:
        busy = f"; other work took {self.busy:.0%} of the CPU meanwhile" if self.busy and self.busy >= QUIET else ""
        threads = f"{self.threads} thread" + ("s" if self.threads != 1 else "")
        return f"host {self.gflops:.1f} GFLOP/s fp32 ({threads}, matmul {SIZE}{busy})"


def measure(threads: int | None = None) -> Yardstick:
    """fp32 matmul rate on `threads` BLAS threads (default: every core this process may use).

    A single small product swings 10x between runs (cache-resident, dominated by waking the thread
    pool, one unlucky time slice decides it). Here: warm-up products first, then the best of several
    1024×1024 products within a time budget, with the BLAS pool pinned to a stated thread count.
    """
    limits, threads, pinned = _thread_limit(threads or default_threads())
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    b = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    c = np.empty_like(a)
    times: list[float] = []
    before = _cpu_times()
    with limits:
        for _ in range(WARMUP):
            np.matmul(a, b, out=c)
        start = time.perf_counter()
        while len(times) < MIN_REPEATS or (len(times) < MAX_REPEATS and time.perf_counter() - start < BUDGET_S):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
    busy = _others_share(before, _cpu_times())
    best, median = min(times), float(np.median(times))
    return Yardstick(gflops=round(2 * SIZE**3 / best / 1e9, 1), threads=threads,
                     method=f"fp32 matmul {SIZE}x{SIZE}, best of {len(times)} after {WARMUP} warm-up, {pinned}",
                     spread=round((median - best) / median, 3), busy=busy)


def _cpu_times() -> tuple[float, float, float]:
    """(all CPU time, idle time, this process's CPU time) so far, in seconds."""
    host, own = psutil.cpu_times(), psutil.Process().cpu_times()
    idle = host.idle + getattr(host, "iowait", 0.0)
    # guest time is already counted in user time on Linux
    total = sum(host) - getattr(host, "guest", 0.0) - getattr(host, "guest_nice", 0.0)
    return total, idle, own.user + own.system


def _others_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float | None:
    total, idle, own = (a - b for a, b in zip(after, before))
    if total <= 0:
        return None
    return round(max(0.0, total - idle - own) / total, 3)


def _thread_limit(threads: int):
    """Pin the BLAS pool with threadpoolctl where it is installed; else numpy's pool as its variables set it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        return (nullcontext(), int(env) if env and env.isdigit() else default_threads(),
                "BLAS threads as numpy set them (threadpoolctl not installed)")
    return threadpool_limits(limits=threads, user_api="blas"), threads, "BLAS threads pinned with threadpoolctl"
