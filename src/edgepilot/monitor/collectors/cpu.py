"""CPU: busy % overall and per core (from /proc/stat through psutil), per-core frequency, load average."""
from __future__ import annotations

import os
import time

import psutil

from edgepilot.monitor.readings import Collector, Reading, reading

_IDLE = ("idle", "iowait")


def _busy_idle(t) -> tuple[float, float]:
    total = sum(t)
    idle = sum(getattr(t, f, 0.0) for f in _IDLE)
    # guest time is already counted in user on Linux; subtracting keeps the total from double counting
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return total - idle, total


class CpuCollector(Collector):
    name = "cpu"
    panels = ("cpu",)
    _MIN_WINDOW_S = 0.05  # shorter windows hold too few jiffies to give a meaningful percentage

    def __init__(self) -> None:
        self._prev = self._times()
        self._prev_t = time.monotonic()

    @staticmethod
    def _times() -> list[tuple[float, float]]:
        return [_busy_idle(psutil.cpu_times())] + [_busy_idle(t) for t in psutil.cpu_times(percpu=True)]

    def probe(self) -> tuple[bool, str]:
        return True, f"psutil {psutil.__version__}: /proc/stat, cpufreq, load average; {os.cpu_count()} logical cores"

    def collect(self) -> list[Reading]:
        out: list[Reading] = []
        now, cur = time.monotonic(), self._times()
        if now - self._prev_t >= self._MIN_WINDOW_S and len(cur) == len(self._prev):
            for i, ((b1, t1), (b0, t0)) in enumerate(zip(cur, self._prev)):
                if t1 > t0:
                    pct = min(100.0, max(0.0, (b1 - b0) / (t1 - t0) * 100))
                    out.append(reading("cpu_percent", pct, "%", "psutil:/proc/stat", **({} if i == 0 else
                                                                                     {"core": i - 1})))
            self._prev, self._prev_t = cur, now
        elif len(cur) != len(self._prev):  # a core went on- or offline: start a new window
            self._prev, self._prev_t = cur, now
        try:
            freqs = psutil.cpu_freq(percpu=True) or []
        except (OSError, NotImplementedError):
            freqs = []
        for i, f in enumerate(freqs):
            if f.current and f.current > 0:  # 0 means the kernel exposes no frequency for the core
                out.append(reading("cpu_frequency_mhz", f.current, "MHz", "psutil:cpufreq", core=i))
        try:
            for span, v in zip(("1m", "5m", "15m"), os.getloadavg()):
                out.append(reading("load_average", v, "load", "os.getloadavg", window=span))
        except OSError:
            pass
        return out
