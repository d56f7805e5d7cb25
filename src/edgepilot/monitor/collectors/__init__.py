"""The collector registry: every source edgepilot can read, one module each."""
from __future__ import annotations

from pathlib import Path

from edgepilot.monitor.readings import Collector


def default_collectors(*, pid: int | None = None, sysfs: Path = Path("/sys"),
                       tegrastats_interval_ms: int = 1000) -> list[Collector]:
    """One of each collector; those whose source is absent report why at probe time."""
    from edgepilot.monitor.collectors.battery import BatteryCollector
    from edgepilot.monitor.collectors.cpu import CpuCollector
    from edgepilot.monitor.collectors.disk import DiskCollector
    from edgepilot.monitor.collectors.hwmon import HwmonPowerCollector
    from edgepilot.monitor.collectors.inference import InferenceCollector
    from edgepilot.monitor.collectors.jetson_sysfs import JetsonSysfsCollector
    from edgepilot.monitor.collectors.memory import MemoryCollector
    from edgepilot.monitor.collectors.network import NetworkCollector
    from edgepilot.monitor.collectors.nvml import NvmlCollector
    from edgepilot.monitor.collectors.process import ProcessCollector
    from edgepilot.monitor.collectors.rapl import RaplCollector
    from edgepilot.monitor.collectors.raspberrypi import VcgencmdCollector
    from edgepilot.monitor.collectors.tegrastats import TegrastatsCollector
    from edgepilot.monitor.collectors.thermal import ThermalCollector

    return [CpuCollector(), MemoryCollector(), DiskCollector(), NetworkCollector(), ProcessCollector(pid),
            ThermalCollector(sysfs), VcgencmdCollector(), NvmlCollector(), TegrastatsCollector(
                interval_ms=tegrastats_interval_ms), JetsonSysfsCollector(sysfs), RaplCollector(sysfs),
            HwmonPowerCollector(sysfs), BatteryCollector(sysfs), InferenceCollector()]
