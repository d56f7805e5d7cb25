"""What a collector returns: readings with a unit and a source, and each source's availability with its reason."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured value. `metric` names the quantity and carries its unit (cpu_percent, power_watts ...)."""

    metric: str
    value: float
    unit: str  # "%", "MHz", "B", "B/s", "°C", "W", "J", "ms", "1/s", "count", "V", "A", "bool", "load"
    source: str  # where it was read: "psutil", "sysfs:/sys/class/thermal/thermal_zone0", "nvml", "tegrastats" ...
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """A stable series name: `metric{label=value,...}`."""
        if not self.labels:
            return self.metric
        return self.metric + "{" + ",".join(f"{k}={v}" for k, v in self.labels) + "}"

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def reading(metric: str, value: float, unit: str, source: str, **labels: object) -> Reading:
    return Reading(metric, float(value), unit, source, tuple(sorted((k, str(v)) for k, v in labels.items())))


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Whether a collector could read its source; `detail` says what it reads, or why it cannot."""

    name: str
    available: bool
    detail: str
    panels: tuple[str, ...] = ()


@dataclass
class Sample:
    ts: float
    readings: list[Reading] = field(default_factory=list)
    sources: list[SourceStatus] = field(default_factory=list)

    def value(self, key: str) -> float | None:
        for r in self.readings:
            if r.key == key:
                return r.value
        return None

    def by_metric(self, metric: str) -> list[Reading]:
        return [r for r in self.readings if r.metric == metric]


class SourceUnavailable(Exception):
    """Raised by a collector whose source cannot be read; the message is the reason shown to the user."""


class Collector(ABC):
    """Reads one source. `probe` never raises; `collect` raises SourceUnavailable with the reason."""

    name: ClassVar[str]
    panels: ClassVar[tuple[str, ...]] = ()
    retry_s: ClassVar[float] = 60.0  # how often an unavailable source is tried again (a driver loaded, a GPU woke)

    @abstractmethod
    def probe(self) -> tuple[bool, str]:
        """(available, what it reads or why not); cheap, called once before sampling."""

    @abstractmethod
    def collect(self) -> list[Reading]:
        """The current readings; an empty list means no value yet (e.g. a rate needs two readings)."""

    def extra_statuses(self) -> list[SourceStatus]:
        """Sources this collector reports on behalf of another process (a remote server's own sources)."""
        return []

    def close(self) -> None:  # noqa: B027 (optional hook: most collectors hold nothing)
        """Release files, subprocesses or libraries."""


def read_text(path: Path) -> str | None:
    """A sysfs attribute's content, or None when it is absent or unreadable."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_number(path: Path) -> float | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


class RateTracker:
    """Turns monotonically increasing counters into per-second rates between two calls."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def rate(self, key: str, counter: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        prev = self._last.get(key)
        self._last[key] = (now, counter)
        if prev is None or now <= prev[0] or counter < prev[1]:  # first reading, or the counter was reset
            return None
        return (counter - prev[1]) / (now - prev[0])
