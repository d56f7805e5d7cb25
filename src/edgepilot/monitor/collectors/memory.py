"""Memory and swap from psutil (/proc/meminfo on Linux)."""
from __future__ import annotations

import psutil

from edgepilot.monitor.readings import Collector, Reading, reading


class MemoryCollector(Collector):
    name = "memory"
    panels = ("memory",)

    def probe(self) -> tuple[bool, str]:
        return True, f"psutil {psutil.__version__}: /proc/meminfo"

    def collect(self) -> list[Reading]:
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        src = "psutil:/proc/meminfo"
        out = [reading("memory_percent", vm.percent, "%", src),
               reading("memory_used_bytes", vm.total - vm.available, "B", src),
               reading("memory_available_bytes", vm.available, "B", src),
               reading("memory_total_bytes", vm.total, "B", src),
               reading("swap_total_bytes", sw.total, "B", src)]
        if sw.total > 0:  # no swap configured: a 0 % would suggest there is some
            out += [reading("swap_used_bytes", sw.used, "B", src), reading("swap_percent", sw.percent, "%", src)]
        return out
