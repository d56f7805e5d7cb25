"""NVIDIA GPUs through NVML (nvidia-ml-py): utilisation, memory, temperature, power, clocks, energy."""
from __future__ import annotations

import logging
from typing import Any

from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, reading

log = logging.getLogger(__name__)


def _name(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class NvmlCollector(Collector):
    name = "nvml"
    panels = ("gpu", "temperature", "power")

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[int, Any, str]] = []
        self._why: str | None = None

    def _init(self) -> None:
        if self._nvml is not None or self._why is not None:
            return
        try:
            import pynvml
        except ImportError:
            self._why = "nvidia-ml-py is not installed (pip install 'edgepilot[gpu]')"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            # the usual case without an NVIDIA driver: libnvidia-ml.so cannot be loaded
            self._why = f"NVML could not start: {e} (no NVIDIA driver, or no NVIDIA GPU)"
            return
        try:
            n = pynvml.nvmlDeviceGetCount()
            self._handles = [(i, h, _name(pynvml.nvmlDeviceGetName(h)))
                             for i in range(n) for h in [pynvml.nvmlDeviceGetHandleByIndex(i)]]
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            self._why = f"NVML started but listing GPUs failed: {e}"
            return
        if not self._handles:
            pynvml.nvmlShutdown()
            self._why = "NVML found no GPU"
            return
        self._nvml = pynvml

    def probe(self) -> tuple[bool, str]:
        self._init()
        if self._nvml is None:
            return False, self._why or "NVML unavailable"
        driver = _name(self._nvml.nvmlSystemGetDriverVersion())
        return True, f"NVML, driver {driver}: " + ", ".join(f"gpu{i} {n}" for i, _, n in self._handles)

    def collect(self) -> list[Reading]:
        self._init()
        if self._nvml is None:
            raise SourceUnavailable(self._why or "NVML unavailable")
        nv, out = self._nvml, []

        def field(fn, *args):
            try:
                return fn(*args)
            except nv.NVMLError_NotSupported:  # e.g. power on some boards, or Jetson's NVML subset
                return None
            except nv.NVMLError as e:
                log.debug("NVML %s failed: %s", fn.__name__, e)
                return None

        for i, h, name in self._handles:
            gpu = {"gpu": i, "name": name}
            util = field(nv.nvmlDeviceGetUtilizationRates, h)
            if util is not None:
                out += [reading("gpu_util_percent", util.gpu, "%", "nvml", **gpu),
                        reading("gpu_memory_util_percent", util.memory, "%", "nvml", **gpu)]
            mem = field(nv.nvmlDeviceGetMemoryInfo, h)
            if mem is not None:
                out += [reading("gpu_memory_used_bytes", mem.used, "B", "nvml", **gpu),
                        reading("gpu_memory_total_bytes", mem.total, "B", "nvml", **gpu)]
            temp = field(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            if temp is not None:
                out.append(reading("temperature_celsius", temp, "°C", "nvml", sensor=f"gpu{i}"))
            mw = field(nv.nvmlDeviceGetPowerUsage, h)
            if mw is not None:
                out.append(reading("power_watts", mw / 1000.0, "W", "nvml", rail=f"gpu{i}"))
            mj = field(nv.nvmlDeviceGetTotalEnergyConsumption, h)
            if mj is not None:
                out.append(reading("energy_joules_total", mj / 1000.0, "J", "nvml", rail=f"gpu{i}"))
            for clock, const in (("graphics", nv.NVML_CLOCK_GRAPHICS), ("sm", nv.NVML_CLOCK_SM),
                                 ("memory", nv.NVML_CLOCK_MEM)):
                mhz = field(nv.nvmlDeviceGetClockInfo, h, const)
                if mhz is not None:
                    out.append(reading("gpu_clock_mhz", mhz, "MHz", "nvml", clock=clock, **gpu))
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None
