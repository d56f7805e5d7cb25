"""Temperatures: psutil's hwmon sensors and the kernel's /sys/class/thermal zones."""
from __future__ import annotations

from pathlib import Path

import psutil

from edgepilot.monitor.readings import Collector, Reading, read_number, read_text, reading

# Absent sensors on some boards read -256 °C (Jetson CV clusters) or absurd values; they are not readings.
_PLAUSIBLE_C = (-60.0, 250.0)


def plausible_celsius(c: float) -> bool:
    return _PLAUSIBLE_C[0] <= c <= _PLAUSIBLE_C[1]


class ThermalCollector(Collector):
    name = "thermal"
    panels = ("temperature",)

    def __init__(self, sysfs: Path = Path("/sys"), use_psutil: bool = True) -> None:
        self.zones_dir = sysfs / "class" / "thermal"
        self.use_psutil = use_psutil

    def _zones(self) -> list[Path]:
        try:
            return sorted(self.zones_dir.glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0))
        except OSError:
            return []

    def _psutil_sensors(self) -> dict:
        if not self.use_psutil or not hasattr(psutil, "sensors_temperatures"):
            return {}
        try:
            return psutil.sensors_temperatures() or {}
        except (OSError, RuntimeError):
            return {}

    def probe(self) -> tuple[bool, str]:
        zones = [z for z in self._zones() if read_number(z / "temp") is not None]
        sensors = self._psutil_sensors()
        if not zones and not sensors:
            return False, (f"no readable thermal zone in {self.zones_dir} and no hwmon temperature sensor via "
                           "psutil (usual in a virtual machine or container)")
        parts = []
        if zones:
            parts.append(f"{len(zones)} thermal zone(s) in {self.zones_dir}")
        if sensors:
            parts.append(f"hwmon via psutil: {', '.join(sorted(sensors))}")
        return True, "; ".join(parts)

    def collect(self) -> list[Reading]:
        out: list[Reading] = []
        for zone in self._zones():
            milli = read_number(zone / "temp")
            if milli is None:
                continue
            c = milli / 1000.0  # the thermal sysfs ABI is millidegrees Celsius
            kind = read_text(zone / "type") or zone.name
            # Jetson Nano/TX1's PMIC-Die zone is a constant 100 °C from its driver, not a measurement
            if plausible_celsius(c) and kind != "PMIC-Die":
                out.append(reading("temperature_celsius", c, "°C", f"sysfs:{zone}", sensor=f"{kind}:{zone.name[12:]}"))
        for chip, entries in self._psutil_sensors().items():
            for i, e in enumerate(entries):
                if e.current is not None and plausible_celsius(e.current):
                    label = e.label or str(i)
                    out.append(reading("temperature_celsius", e.current, "°C", "psutil:hwmon",
                                       sensor=f"{chip}/{label}"))
        return out
