"""Intel/AMD RAPL energy counters (/sys/class/powercap): power per zone, with the counters' wraparound handled."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, read_number, read_text, reading


@dataclass
class RaplZone:
    path: Path
    name: str  # "package-0", "package-0/core", "psys" ...
    max_range_uj: float
    top_level: bool  # package/psys zones; subzones (core, uncore, dram) are parts of a package's figure


def find_zones(sysfs: Path = Path("/sys")) -> list[RaplZone]:
    root = sysfs / "class" / "powercap"
    zones = []
    try:
        entries = sorted(p for p in root.iterdir() if "rapl" in p.name and ":" in p.name)
    except OSError:
        return []
    names = {p.name: read_text(p / "name") or p.name for p in entries}
    for p in entries:
        prefix, _, idx = p.name.partition(":")
        parent = f"{prefix}:{idx.split(':')[0]}"
        top = idx.count(":") == 0
        name = names[p.name] if top else f"{names.get(parent, parent)}/{names[p.name]}"
        zones.append(RaplZone(p, name, read_number(p / "max_energy_range_uj") or 0.0, top))
    return zones


class EnergyCounter:
    """A wrapping microjoule counter turned into joules accumulated since the first read."""

    def __init__(self, zone: RaplZone) -> None:
        self.zone = zone
        self._last: float | None = None
        self.joules = 0.0

    def read(self) -> float:
        uj = read_number(self.zone.path / "energy_uj")
        if uj is None:
            raise SourceUnavailable(f"cannot read {self.zone.path / 'energy_uj'} (readable by root only since "
                                    "Linux 5.10, CVE-2020-8694)")
        if self._last is not None:
            delta = uj - self._last
            if delta < 0:  # the counter wrapped at max_energy_range_uj
                delta += self.zone.max_range_uj
            self.joules += delta / 1e6
        self._last = uj
        return self.joules


class RaplCollector(Collector):
    name = "rapl"
    panels = ("power",)

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self.sysfs = sysfs
        self._counters = [EnergyCounter(z) for z in find_zones(sysfs)]
        self._last: dict[str, tuple[float, float]] = {}

    def probe(self) -> tuple[bool, str]:
        if not self._counters:
            where = self.sysfs / "class" / "powercap"
            return False, (f"{where} does not exist (no RAPL: not an Intel/AMD CPU, the intel_rapl driver is not "
                           "loaded, or a virtual machine that hides it)" if not where.exists()
                           else f"no RAPL zone in {where}")
        try:
            for c in self._counters:
                c.read()
        except SourceUnavailable as e:
            return False, str(e)
        return True, "RAPL: " + ", ".join(c.zone.name for c in self._counters)

    def collect(self) -> list[Reading]:
        if not self._counters:
            raise SourceUnavailable("no RAPL zones")
        out: list[Reading] = []
        now = time.monotonic()
        for c in self._counters:
            j = c.read()
            src = f"sysfs:{c.zone.path}/energy_uj"
            out.append(reading("energy_joules_total", j, "J", src, rail=f"rapl:{c.zone.name}"))
            prev = self._last.get(c.zone.name)
            self._last[c.zone.name] = (now, j)
            if prev is not None and now > prev[0]:
                out.append(reading("power_watts", (j - prev[1]) / (now - prev[0]), "W", src,
                                   rail=f"rapl:{c.zone.name}"))
        return out
