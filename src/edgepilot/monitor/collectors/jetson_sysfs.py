"""Jetson sysfs nodes that need no tool: iGPU load and clock (devfreq), and INA3221 rails on JetPack 4's iio driver."""
from __future__ import annotations

from pathlib import Path

from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, read_number, read_text, reading

# Where L4T exposes the iGPU's load in per mille (0–1000), by module generation; the first that exists wins.
GPU_LOAD_PATHS = (
    "devices/gpu.0/load",                              # Nano, TX1, TX2, Xavier (JetPack 4)
    "devices/platform/gpu.0/load",                     # Xavier NX / Orin (JetPack 5, 6)
    "devices/platform/bus@0/17000000.gpu/load",        # Orin on newer kernels
    "devices/platform/17000000.ga10b/load",
    "devices/17000000.gv11b/load",
    "devices/17000000.gp10b/load",
    "devices/57000000.gpu/load",
)
_GPU_DEVFREQ = ("gpu", "ga10b", "gv11b", "gp10b", "gm20b")


class JetsonSysfsCollector(Collector):
    name = "jetson-sysfs"
    panels = ("gpu", "power")

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self.sysfs = sysfs
        self._load = next((sysfs / p for p in GPU_LOAD_PATHS if (sysfs / p).exists()), None)
        devfreq = sysfs / "class" / "devfreq"
        try:
            self._freq = sorted(d / "cur_freq" for d in devfreq.iterdir()
                                if any(k in d.name for k in _GPU_DEVFREQ) and (d / "cur_freq").exists())
        except OSError:
            self._freq = []
        try:
            self._iio = sorted((sysfs / "bus" / "i2c" / "drivers" / "ina3221x").glob("*/iio:device*"))
        except OSError:
            self._iio = []

    def probe(self) -> tuple[bool, str]:
        found = ([f"GPU load {self._load}"] if self._load else []) + [f"devfreq {p.parent.name}" for p in self._freq] \
            + [f"INA3221 {p}" for p in self._iio]
        if not found:
            return False, (f"no Jetson iGPU load, GPU devfreq or INA3221 iio node under {self.sysfs} "
                           "(not a Jetson)")
        return True, "; ".join(found)

    def collect(self) -> list[Reading]:
        out: list[Reading] = []
        if self._load is not None:
            permille = read_number(self._load)
            if permille is not None:
                out.append(reading("gpu_util_percent", permille / 10.0, "%", f"sysfs:{self._load}", gpu="igpu"))
        for path in self._freq:
            hz = read_number(path)
            if hz is not None:
                out.append(reading("gpu_clock_mhz", hz / 1e6, "MHz", f"sysfs:{path}", gpu=path.parent.name))
        for dev in self._iio:
            for i in range(8):  # INA3221 has three channels; some carrier boards chain a second chip
                rail = read_text(dev / f"rail_name_{i}")
                if rail is None:
                    continue
                mw = read_number(dev / f"in_power{i}_input")
                if mw is not None:
                    out.append(reading("power_watts", mw / 1000.0, "W", f"sysfs:{dev}", rail=rail))
                mv = read_number(dev / f"in_voltage{i}_input")
                if mv is not None:
                    out.append(reading("voltage_volts", mv / 1000.0, "V", f"sysfs:{dev}", rail=rail))
                ma = read_number(dev / f"in_current{i}_input")
                if ma is not None:
                    out.append(reading("current_amps", ma / 1000.0, "A", f"sysfs:{dev}", rail=rail))
        if not out and (self._load or self._freq or self._iio):
            raise SourceUnavailable("Jetson sysfs nodes exist but none could be read (try as root)")
        return out
