"""Energy over a window (for `edgepilot bench`): RAPL or NVML energy counters, or sampled INA/tegrastats power."""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepilot.monitor.readings import SourceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnergyWindow:
    joules: float
    seconds: float
    source: str
    scope: str  # what the figure covers, e.g. "CPU package(s), whole machine"

    @property
    def mean_watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0


class EnergyMeter(ABC):
    source: str
    scope: str

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> EnergyWindow: ...


class RaplMeter(EnergyMeter):
    """Sums the top-level RAPL zones (packages, or psys where present) — subzones are parts of those."""

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        from edgepilot.monitor.collectors.rapl import EnergyCounter, find_zones

        zones = [z for z in find_zones(sysfs) if z.top_level]
        psys = [z for z in zones if z.name.startswith("psys")]
        zones = psys or zones  # psys covers the whole SoC and already includes the packages
        if not zones:
            raise SourceUnavailable("no RAPL zone in /sys/class/powercap")
        self._counters = [EnergyCounter(z) for z in zones]
        self.source = "rapl:" + "+".join(z.name for z in zones)
        self.scope = "whole SoC (psys)" if psys else "CPU package(s), every process on the machine"
        for c in self._counters:
            c.read()  # raises with the reason when energy_uj is unreadable

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._j0 = sum(c.read() for c in self._counters)

    def stop(self) -> EnergyWindow:
        # a RAPL counter wraps after max_energy_range_uj (hundreds of kJ); one read per window sees one wrap at most
        j = sum(c.read() for c in self._counters) - self._j0
        return EnergyWindow(j, time.perf_counter() - self._t0, self.source, self.scope)


class NvmlMeter(EnergyMeter):
    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as e:
            raise SourceUnavailable("nvidia-ml-py is not installed") from e
        try:
            pynvml.nvmlInit()
            self._h = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            for h in self._h:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except pynvml.NVMLError as e:
            raise SourceUnavailable(f"NVML energy counter unavailable: {e}") from e
        self._nv = pynvml
        self.source, self.scope = "nvml", f"{len(self._h)} NVIDIA GPU(s) only"

    def _mj(self) -> float:
        return float(sum(self._nv.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._h))

    def start(self) -> None:
        self._t0, self._mj0 = time.perf_counter(), self._mj()

    def stop(self) -> EnergyWindow:
        return EnergyWindow((self._mj() - self._mj0) / 1000.0, time.perf_counter() - self._t0, self.source, self.scope)


class SampledPowerMeter(EnergyMeter):
    """Integrates an instantaneous power reading (trapezoids) sampled on a background thread."""

    def __init__(self, read_watts: Callable[[], float | None], source: str, scope: str,
                 period_s: float = 0.05, on_stop: Callable[[], None] | None = None) -> None:
        if read_watts() is None:
            raise SourceUnavailable(f"{source}: no power reading")
        self.read_watts, self.source, self.scope, self.period_s = read_watts, source, scope, period_s
        self._on_stop = on_stop
        self._stop = threading.Event()
        self._joules = 0.0
        self._last_t, self._last_w = 0.0, None

    def _step(self) -> None:
        t, w = time.perf_counter(), self.read_watts()
        if w is None:  # a missed reading: the next trapezoid spans the gap
            return
        if self._last_w is not None:
            self._joules += (w + self._last_w) / 2 * (t - self._last_t)
        self._last_t, self._last_w = t, w

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._step()

    def start(self) -> None:
        self._t0 = self._last_t = time.perf_counter()
        self._last_w = self.read_watts()
        self._thread = threading.Thread(target=self._loop, name="energy-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> EnergyWindow:
        self._stop.set()
        self._thread.join()
        self._step()  # close the window at this instant, so the integral spans exactly start..stop
        if self._on_stop is not None:
            self._on_stop()
        return EnergyWindow(self._joules, self._last_t - self._t0, self.source, self.scope)


def _hwmon_meter(sysfs: Path) -> EnergyMeter:
    from edgepilot.monitor.collectors.hwmon import HwmonPowerCollector

    col = HwmonPowerCollector(sysfs)
    ok, why = col.probe()
    if not ok:
        raise SourceUnavailable(why)
    rails = [r for r in col.collect() if r.metric == "power_watts"]
    if not rails:
        raise SourceUnavailable("hwmon has no power reading")
    # the input rail covers the whole module; without one, the largest rail is the best single figure
    pick = next((r for r in rails if any(k in r.label_dict["rail"].upper() for k in ("VDD_IN", "VIN", "5V_IN"))),
                max(rails, key=lambda r: r.value))

    def read() -> float | None:
        return next((r.value for r in col.collect() if r.key == pick.key), None)

    return SampledPowerMeter(read, f"hwmon:{pick.label_dict['rail']}", "one power rail (INA sensor)")


def _tegrastats_meter() -> EnergyMeter:
    from edgepilot.monitor.collectors.tegrastats import TegrastatsCollector

    col = TegrastatsCollector(interval_ms=100)
    ok, why = col.probe()
    if not ok or not col.wait_first(3.0):
        col.close()
        raise SourceUnavailable(why if not ok else "tegrastats printed nothing")
    st = col.latest()
    rail = next((n for n in ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0") if st and n in st.rails), None)
    if rail is None:
        col.close()
        raise SourceUnavailable("tegrastats shows no input power rail")

    def read() -> float | None:
        s = col.latest()
        return s.rails[rail].current_mw / 1000.0 if s and rail in s.rails else None

    return SampledPowerMeter(read, f"tegrastats:{rail}", "whole module input power", period_s=0.1,
                             on_stop=col.close)


def open_energy_meter(sysfs: Path = Path("/sys"), device: str = "cpu") -> tuple[EnergyMeter | None, str]:
    """The best energy source here, or None and every reason why not."""
    tries: list[tuple[str, Callable[[], EnergyMeter]]] = [
        ("tegrastats", _tegrastats_meter), ("hwmon", lambda: _hwmon_meter(sysfs)), ("rapl", lambda: RaplMeter(sysfs))]
    if device.lower() in ("cuda", "gpu") or device.lower().startswith("cuda"):
        tries.insert(0, ("nvml", NvmlMeter))
    reasons = []
    for name, make in tries:
        try:
            return make(), ""
        except SourceUnavailable as e:
            reasons.append(f"{name}: {e}")
        except Exception as e:  # an energy source must never break a benchmark
            log.debug("energy source %s failed", name, exc_info=True)
            reasons.append(f"{name}: {type(e).__name__}: {e}")
    return None, "; ".join(reasons)
