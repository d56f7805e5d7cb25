"""Battery: charge, time left and discharge power (psutil and /sys/class/power_supply)."""
from __future__ import annotations

from pathlib import Path

import psutil

from edgepilot.monitor.readings import Collector, Reading, read_number, read_text, reading


class BatteryCollector(Collector):
    name = "battery"
    panels = ("power",)

    def __init__(self, sysfs: Path = Path("/sys"), use_psutil: bool = True) -> None:
        self.root = sysfs / "class" / "power_supply"
        self.use_psutil = use_psutil

    def _batteries(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if read_text(p / "type") == "Battery")
        except OSError:
            return []

    def _psutil(self):
        if not self.use_psutil:
            return None
        try:
            return psutil.sensors_battery()
        except (OSError, RuntimeError, AttributeError):
            return None

    def probe(self) -> tuple[bool, str]:
        bats = self._batteries()
        if not bats and self._psutil() is None:
            return False, f"no battery (psutil reports none; no type=Battery supply in {self.root})"
        return True, "battery: " + (", ".join(p.name for p in bats) or "psutil")

    def collect(self) -> list[Reading]:
        out: list[Reading] = []
        b = self._psutil()
        if b is not None:
            out.append(reading("battery_percent", b.percent, "%", "psutil"))
            if b.power_plugged is not None:
                out.append(reading("battery_plugged", b.power_plugged, "bool", "psutil"))
            if isinstance(b.secsleft, (int, float)) and b.secsleft >= 0:  # psutil uses negative sentinels
                out.append(reading("battery_seconds_left", b.secsleft, "s", "psutil"))
        for bat in self._batteries():
            src = f"sysfs:{bat}"
            # power_supply ABI: µW, µA, µV; a supply has either power_now or current_now with voltage_now
            uw = read_number(bat / "power_now")
            if uw is None:
                ua, uv = read_number(bat / "current_now"), read_number(bat / "voltage_now")
                uw = abs(ua) * uv / 1e6 if ua is not None and uv is not None else None
            if uw is not None:
                out.append(reading("power_watts", abs(uw) / 1e6, "W", src, rail=f"battery:{bat.name}"))
            cap = read_number(bat / "capacity")
            if cap is not None and b is None:
                out.append(reading("battery_percent", cap, "%", src))
        return out
