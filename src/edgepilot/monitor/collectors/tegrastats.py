"""Jetson `tegrastats`: a parser for its one-line reports (JetPack 4, 5, 6 and later) and a streaming collector."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgepilot.monitor.collectors.thermal import plausible_celsius
from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, reading

_MB = {"k": 1 / 1024, "K": 1 / 1024, "": 1.0, "M": 1.0, "G": 1024.0}
_STAMP = re.compile(r"^\s*\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2}\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)([kKMG]?)B(?:\s*\(lfb (\d+)x(\d+)([kKMG]?)B\))?")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)([kKMG]?)B(?:\s*\(cached (\d+)([kKMG]?)B\))?")
# JetPack 4+: "CPU [12%@1428,off,...]"; L4T 28 (TX1/TX2): "cpu [17%,13%,29%,5%]@408", one clock for all cores.
_CPU = re.compile(r"\b[Cc][Pp][Uu] \[([^\]]*)\](?:@(\d+))?")
# "GR3D_FREQ 0%@76" (JP4), "GR3D_FREQ 0%@[305]" / "0%@[0,0]" (JP5/6, one clock per GPC), "GR3D_FREQ 33%" (no clock).
_LOAD = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+(?:\.\d+)?)%(?:@\[?([\d,]+)\]?)?")
# Engines reported by clock alone or as off: "APE 25", "NVDEC 192", "VIC_FREQ 115", "NVENC off".
_CLOCK = re.compile(r"\b([A-Z][A-Z0-9_]*) (off|\d+)(?=\s|$)")
# "CPU@24.5C", "cpu@44.125C", "CV0@-256C" (absent sensor), "cpu@50C/50C" (recent releases).
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?:/(-?\d+(?:\.\d+)?)C)?")
# "POM_5V_IN 2830/1483" (JP4, mW), "VDD_IN 4915mW/4915mW" (JP5/6); some releases add a third figure.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")
_NOT_ENGINES = {"RAM", "SWAP", "IRAM", "CPU", "MTS", "LFB"}


@dataclass
class CpuCore:
    online: bool
    load_percent: float | None = None
    freq_mhz: float | None = None


@dataclass
class Engine:
    on: bool
    load_percent: float | None = None
    freq_mhz: list[float] = field(default_factory=list)


@dataclass
class Rail:
    current_mw: float
    average_mw: float


@dataclass
class TegraStats:
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    lfb_blocks: int | None = None
    lfb_block_mb: float | None = None
    swap_used_mb: float | None = None
    swap_total_mb: float | None = None
    swap_cached_mb: float | None = None
    cpus: list[CpuCore] = field(default_factory=list)
    engines: dict[str, Engine] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    rails: dict[str, Rail] = field(default_factory=dict)

    @property
    def gpu_load_percent(self) -> float | None:
        e = self.engines.get("GR3D_FREQ") or self.engines.get("GR3D")
        return e.load_percent if e else None


def parse_tegrastats(line: str) -> TegraStats:
    """Parse one line of tegrastats output; fields a release does not print stay None/empty."""
    text = _STAMP.sub("", line.strip())
    if "RAM " not in text:
        raise ValueError(f"not a tegrastats line: {line.strip()[:80]!r}")
    st = TegraStats()
    if m := _RAM.search(text):
        u = _MB[m.group(3)]
        st.ram_used_mb, st.ram_total_mb = int(m.group(1)) * u, int(m.group(2)) * u
        if m.group(4):
            st.lfb_blocks, st.lfb_block_mb = int(m.group(4)), int(m.group(5)) * _MB[m.group(6)]
    if m := _SWAP.search(text):
        u = _MB[m.group(3)]
        st.swap_used_mb, st.swap_total_mb = int(m.group(1)) * u, int(m.group(2)) * u
        if m.group(4):
            st.swap_cached_mb = int(m.group(4)) * _MB[m.group(5)]
    if m := _CPU.search(text):
        shared = float(m.group(2)) if m.group(2) else None
        for item in m.group(1).split(","):
            item = item.strip()
            if not item or item == "off":
                st.cpus.append(CpuCore(online=False))
                continue
            load, _, freq = item.partition("@")
            st.cpus.append(CpuCore(True, float(load.rstrip("%")), float(freq) if freq else shared))
        text = text[:m.start()] + text[m.end():]  # the per-core "12%@1428" items are not engines
    rails = {m.group(1): m for m in _RAIL.finditer(text)}
    for name, m in rails.items():
        if name != "NC":  # "NC": a monitor channel that is not connected on this module
            st.rails[name] = Rail(float(m.group(2)), float(m.group(3)))
    for m in _LOAD.finditer(text):
        if m.group(1) not in _NOT_ENGINES:
            freqs = [float(f) for f in (m.group(3) or "").split(",") if f]
            st.engines[m.group(1)] = Engine(True, float(m.group(2)), freqs)
    for m in _CLOCK.finditer(text):
        name = m.group(1)
        if name in _NOT_ENGINES or name in st.engines or name in rails:
            continue
        st.engines[name] = Engine(False) if m.group(2) == "off" else Engine(True, None, [float(m.group(2))])
    for m in _TEMP.finditer(text):
        c = float(m.group(2))
        # PMIC on the Nano/TX1 is a fixed 100 °C from its driver, not a measurement (jetson-stats drops it too)
        if plausible_celsius(c) and m.group(1) != "PMIC":
            st.temperatures[m.group(1)] = c
    return st


def tegrastats_readings(st: TegraStats, source: str = "tegrastats") -> list[Reading]:
    """Readings in edgepilot's metric names: GPU load, temperatures and power rails feed the report's panels."""
    out: list[Reading] = []
    mb = 1024 * 1024
    for name, v in (("jetson_ram_used_bytes", st.ram_used_mb), ("jetson_ram_total_bytes", st.ram_total_mb),
                    ("jetson_swap_used_bytes", st.swap_used_mb), ("jetson_swap_total_bytes", st.swap_total_mb),
                    ("jetson_swap_cached_bytes", st.swap_cached_mb)):
        if v is not None:
            out.append(reading(name, v * mb, "B", source))
    for i, core in enumerate(st.cpus):
        out.append(reading("jetson_cpu_online", core.online, "bool", source, core=i))
        if core.load_percent is not None:
            out.append(reading("jetson_cpu_percent", core.load_percent, "%", source, core=i))
        if core.freq_mhz is not None:
            out.append(reading("jetson_cpu_frequency_mhz", core.freq_mhz, "MHz", source, core=i))
    for name, e in st.engines.items():
        if name.startswith("GR3D"):  # the integrated GPU; GR3D2_FREQ is the second GPC cluster on some Orins
            if e.load_percent is not None:
                out.append(reading("gpu_util_percent", e.load_percent, "%", source, gpu=name))
            for gpc, f in enumerate(e.freq_mhz):
                out.append(reading("gpu_clock_mhz", f, "MHz", source, gpu=name, gpc=gpc))
        elif name.startswith("EMC"):
            if e.load_percent is not None:
                out.append(reading("jetson_emc_util_percent", e.load_percent, "%", source))
            for f in e.freq_mhz[:1]:
                out.append(reading("jetson_emc_frequency_mhz", f, "MHz", source))
        else:
            out.append(reading("jetson_engine_on", e.on, "bool", source, engine=name))
            if e.load_percent is not None:
                out.append(reading("jetson_engine_util_percent", e.load_percent, "%", source, engine=name))
            for f in e.freq_mhz[:1]:
                out.append(reading("jetson_engine_frequency_mhz", f, "MHz", source, engine=name))
    for name, c in st.temperatures.items():
        out.append(reading("temperature_celsius", c, "°C", source, sensor=name))
    for name, r in st.rails.items():
        out += [reading("power_watts", r.current_mw / 1000.0, "W", source, rail=name),
                reading("power_average_watts", r.average_mw / 1000.0, "W", source, rail=name)]
    return out


class TegrastatsCollector(Collector):
    """Runs `tegrastats --interval MS` in the background and parses its latest line at each sample."""

    name = "tegrastats"
    panels = ("gpu", "temperature", "power")
    STALE_S = 5.0  # a line older than this means tegrastats stopped: report that rather than old values

    def __init__(self, exe: str = "tegrastats", interval_ms: int = 1000) -> None:
        self.exe_name = exe
        self.exe = shutil.which(exe)
        self.interval_ms = interval_ms
        self._proc: subprocess.Popen | None = None
        self._latest: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._why: str | None = None

    def _start(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            raise SourceUnavailable(self._why or f"{self.exe} exited ({self._proc.returncode})")
        if self.exe is None:
            board = "" if Path("/etc/nv_tegra_release").exists() else " (not a Jetson: /etc/nv_tegra_release is absent)"
            raise SourceUnavailable(f"{self.exe_name} not found on PATH{board}")
        try:
            # stderr into the one pipe read: a tool that writes much there must not block on a pipe nobody drains
            self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        except OSError as e:
            raise SourceUnavailable(f"could not start {self.exe}: {e}") from e
        threading.Thread(target=self._read, args=(self._proc,), name="tegrastats-reader", daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None  # opened with stdout=PIPE above
        said = ""  # the last line that is no reading: why it exited, if it does
        for line in proc.stdout:
            if "RAM " in line:
                with self._lock:
                    self._latest = (time.monotonic(), line)
            elif line.strip():
                said = line.strip()
        self._why = f"{self.exe} exited ({proc.wait()})" + (f": {said}" if said else "")

    def probe(self) -> tuple[bool, str]:
        try:
            self._start()
        except SourceUnavailable as e:
            return False, str(e)
        return True, f"{self.exe} --interval {self.interval_ms}"

    def wait_first(self, timeout_s: float) -> bool:
        """Wait until tegrastats has printed a line (its first comes one interval after start)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._latest is not None:
                    return True
            if self._proc is not None and self._proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def latest(self) -> TegraStats | None:
        with self._lock:
            latest = self._latest
        if latest is None or time.monotonic() - latest[0] > max(self.STALE_S, 3 * self.interval_ms / 1000):
            return None
        return parse_tegrastats(latest[1])

    def collect(self) -> list[Reading]:
        self._start()
        try:
            st = self.latest()
        except ValueError as e:
            raise SourceUnavailable(str(e)) from e
        return [] if st is None else tegrastats_readings(st)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
