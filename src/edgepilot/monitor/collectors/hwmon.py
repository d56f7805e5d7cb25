"""hwmon power sensors: INA219/INA226/INA260 (ina2xx driver) power*_input, INA3221 voltage × current, energy*_input."""
from __future__ import annotations

import re
from pathlib import Path

from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, read_number, read_text, reading

_CHANNEL = re.compile(r"^(power|energy|curr)(\d+)_(input|average)$")


class HwmonPowerCollector(Collector):
    name = "hwmon-power"
    panels = ("power",)

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self.root = sysfs / "class" / "hwmon"
        self._chips = self._scan()

    def _scan(self) -> list[tuple[Path, str]]:
        chips = []
        try:
            entries = sorted(self.root.iterdir())
        except OSError:
            return []
        for chip in entries:
            try:
                files = {f.name for f in chip.iterdir()}
            except OSError:
                continue
            kinds = {m.group(1) for f in files if (m := _CHANNEL.match(f))}
            if "power" in kinds or "energy" in kinds or "curr" in kinds:  # a power monitor, not a fan/temp chip
                chips.append((chip, read_text(chip / "name") or chip.name))
        return chips

    def probe(self) -> tuple[bool, str]:
        if not self._chips:
            return False, (f"no power-monitor chip in {self.root}" if self.root.exists() else
                           f"{self.root} does not exist (no hwmon sensors exposed, usual in a virtual machine)")
        return True, "hwmon: " + ", ".join(f"{name} ({p.name})" for p, name in self._chips)

    def collect(self) -> list[Reading]:
        out: list[Reading] = []
        for chip, chip_name in self._chips:
            src = f"sysfs:{chip}"
            try:
                names = sorted(f.name for f in chip.iterdir())
            except OSError:
                continue
            for fname in names:
                m = _CHANNEL.match(fname)
                if not m:
                    continue
                kind, n, _ = m.groups()
                label = read_text(chip / f"{kind}{n}_label") or read_text(chip / f"in{n}_label") or f"{kind}{n}"
                rail = f"{chip_name}:{label}"
                v = read_number(chip / fname)
                if v is None:
                    continue
                if kind == "power":  # hwmon ABI: microwatts
                    out.append(reading("power_watts", v / 1e6, "W", src, rail=rail))
                elif kind == "energy":  # microjoules, monotonic
                    out.append(reading("energy_joules_total", v / 1e6, "J", src, rail=rail))
                elif kind == "curr":  # milliamps; INA3221 has no power file, so power is V × I on its bus side
                    out.append(reading("current_amps", v / 1e3, "A", src, rail=rail))
                    mv = read_number(chip / f"in{n}_input")
                    if mv is not None:
                        out.append(reading("voltage_volts", mv / 1e3, "V", src, rail=rail))
                        if not (chip / f"power{n}_input").exists():
                            out.append(reading("power_watts", mv * v / 1e6, "W", src, rail=rail))
        if not out and self._chips:
            raise SourceUnavailable("hwmon power sensors exist but none could be read")
        return out
