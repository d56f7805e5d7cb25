"""Raspberry Pi firmware: `vcgencmd measure_temp` and `get_throttled` (under-voltage and throttling bits)."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, reading

# get_throttled bits, as documented for the Raspberry Pi firmware (`vcgencmd get_throttled`).
THROTTLE_BITS: dict[int, str] = {
    0: "under_voltage",
    1: "arm_frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
    16: "under_voltage_occurred",
    17: "arm_frequency_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}

_TEMP_RE = re.compile(r"temp=(-?[0-9.]+)'C")
_THROTTLED_RE = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")


@dataclass(frozen=True)
class ThrottleState:
    raw: int
    flags: dict[str, bool]

    @property
    def active(self) -> list[str]:
        return [name for name, on in self.flags.items() if on]


def parse_measure_temp(text: str) -> float:
    """`temp=47.2'C` → 47.2."""
    m = _TEMP_RE.search(text)
    if not m:
        raise ValueError(f"not a vcgencmd measure_temp answer: {text.strip()!r}")
    return float(m.group(1))


def parse_get_throttled(text: str) -> ThrottleState:
    """`throttled=0x50005` → the raw mask and every documented bit by name."""
    m = _THROTTLED_RE.search(text)
    if not m:
        raise ValueError(f"not a vcgencmd get_throttled answer: {text.strip()!r}")
    raw = int(m.group(1), 0)
    return ThrottleState(raw, {name: bool(raw >> bit & 1) for bit, name in THROTTLE_BITS.items()})


class VcgencmdCollector(Collector):
    name = "vcgencmd"
    panels = ("temperature",)
    THROTTLE_EVERY_S = 5.0  # the throttle mask changes rarely; one subprocess fewer per tick on a small board

    def __init__(self, exe: str = "vcgencmd", timeout_s: float = 2.0) -> None:
        self.exe = shutil.which(exe)
        self.exe_name = exe
        self.timeout_s = timeout_s
        self._throttle: ThrottleState | None = None
        self._throttle_at = float("-inf")

    def _run(self, *args: str) -> str:
        if self.exe is None:
            raise SourceUnavailable(f"{self.exe_name} not found on PATH")
        try:
            p = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SourceUnavailable(f"vcgencmd {' '.join(args)} failed: {e}") from e
        if p.returncode != 0:
            msg = (p.stderr or p.stdout).strip().splitlines()
            raise SourceUnavailable(f"vcgencmd {' '.join(args)} exited {p.returncode}: "
                                    f"{msg[-1] if msg else 'no message'} (is /dev/vchiq accessible?)")
        return p.stdout

    def probe(self) -> tuple[bool, str]:
        if self.exe is None:
            return False, (f"{self.exe_name} not found on PATH (not a Raspberry Pi, or libraspberrypi-bin / "
                           "raspi-utils is not installed)")
        try:
            parse_measure_temp(self._run("measure_temp"))
        except (SourceUnavailable, ValueError) as e:
            return False, str(e)
        return True, f"{self.exe}: measure_temp, get_throttled"

    def collect(self) -> list[Reading]:
        if self.exe is None:
            raise SourceUnavailable(f"{self.exe_name} not found on PATH")
        try:
            out = [reading("temperature_celsius", parse_measure_temp(self._run("measure_temp")), "°C",
                           "vcgencmd measure_temp", sensor="soc")]
            now = time.monotonic()
            if now - self._throttle_at >= self.THROTTLE_EVERY_S:
                self._throttle, self._throttle_at = parse_get_throttled(self._run("get_throttled")), now
        except ValueError as e:
            raise SourceUnavailable(str(e)) from e
        if self._throttle is not None:
            src = "vcgencmd get_throttled"
            out.append(reading("pi_throttled_mask", self._throttle.raw, "bitmask", src))
            out += [reading(f"pi_{name}", on, "bool", src) for name, on in self._throttle.flags.items()]
        return out
