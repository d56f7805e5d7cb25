"""Statistics per series (mean / std / min / max), threshold advice, and the text report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from edgepilot.errors import ConfigError
from edgepilot.monitor.readings import SourceStatus


class Thresholds(BaseModel, extra="forbid"):
    """When advice fires: the reference article's defaults."""

    cpu_percent: float = Field(80.0, gt=0, description="overall CPU busy, %")
    memory_percent: float = Field(85.0, gt=0, description="memory in use, %")
    temperature_celsius: float = Field(70.0, description="any temperature sensor, °C")
    inference_latency_ms: float = Field(20.0, gt=0, description="mean inference latency per sample window, ms")
    power_watts: float = Field(10.0, gt=0, description="any power rail or package, W")

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: float | None) -> Thresholds:
        """Defaults, then a YAML file's values, then explicit overrides (None = keep)."""
        data: dict = {}
        if path is not None:
            p = Path(path)
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read thresholds file {p}: {e}") from e
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: expected a mapping of metric: threshold")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = f"{path}: " if path else ""
            raise ConfigError(f"{where}field {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    metric: str
    unit: str
    threshold: str | None  # the Thresholds field that applies
    advice: str
    overall_only: bool = False  # plot and advise on the unlabelled series only (CPU: the total, not each core)

    def shows(self, metric: str, labels) -> bool:
        return metric == self.metric and not (self.overall_only and labels)


# The reference article's six panels and its advice, in its order.
PANELS: tuple[Panel, ...] = (
    Panel("cpu", "CPU", "cpu_percent", "%", "cpu_percent",
          "optimise the algorithm or the model (edgepilot optimize: quantise, prune), or move to faster hardware",
          overall_only=True),
    Panel("memory", "Memory", "memory_percent", "%", "memory_percent",
          "reduce memory use (a smaller or quantised model, fewer parallel sessions) or add physical memory"),
    Panel("gpu", "GPU", "gpu_util_percent", "%", None, ""),
    Panel("temperature", "Temperature", "temperature_celsius", "°C", "temperature_celsius",
          "improve cooling (heatsink, fan, airflow) or lower the clock / power mode"),
    Panel("inference", "Inference time", "inference_latency_ms", "ms", "inference_latency_ms",
          "optimise the model (quantise, a lighter architecture) or use a hardware accelerator"),
    Panel("power", "Power", "power_watts", "W", "power_watts",
          "adjust the power policy or use a low-power mode (nvpmodel, CPU governor), or a more efficient model"),
)


@dataclass(frozen=True)
class SeriesStats:
    key: str
    metric: str
    labels: dict[str, str]
    unit: str
    source: str
    n: int
    mean: float
    std: float
    min: float
    max: float


@dataclass(frozen=True)
class Advice:
    panel: str
    key: str
    threshold: float
    max: float
    mean: float
    fraction_over: float  # share of samples above the threshold
    message: str


def stats_of(key: str, metric: str, labels: dict[str, str], unit: str, source: str, values) -> SeriesStats:
    v = np.asarray(values, dtype=float)
    return SeriesStats(key, metric, labels, unit, source, int(v.size), float(v.mean()), float(v.std()), float(v.min()),
                       float(v.max()))


def advise(stats: list[SeriesStats], series_values: dict[str, list[float]],
           thresholds: Thresholds) -> list[Advice]:
    """One piece of advice for each panel series whose maximum went over its threshold (as the article does)."""
    out = []
    for panel in PANELS:
        if panel.threshold is None:
            continue
        limit = getattr(thresholds, panel.threshold)
        for s in stats:
            if not panel.shows(s.metric, s.labels) or s.max <= limit:
                continue
            v = np.asarray(series_values.get(s.key, []), dtype=float)
            over = float((v > limit).mean()) if v.size else 0.0
            out.append(Advice(panel.name, s.key, limit, s.max, s.mean, over,
                              f"{panel.title}: {s.key} reached {s.max:.1f} {s.unit} (mean {s.mean:.1f}, above "
                              f"{limit:g} {s.unit} in {over:.0%} of samples) — {panel.advice}"))
    return out


def unavailable_reason(panel: str, sources: list[SourceStatus], sep: str = "; ") -> str:
    """Why a panel has no data: each source that could feed it, and why it did not."""
    feeding = [s for s in sources if panel in s.panels]
    if not feeding:
        return "no collector reads this quantity"
    down = [f"{s.name}: {s.detail}" for s in feeding if not s.available]
    return sep.join(down) if down else "its sources were available but recorded no value in this window"


def text_report(stats: list[SeriesStats], advice: list[Advice], sources: list[SourceStatus],
                window: tuple[float, float] | None = None) -> str:
    lines = ["Edge device performance report", "=" * 30]
    if window:
        lines.append(f"window: {window[1] - window[0]:.0f} s")
    for panel in PANELS:
        lines.append("")
        lines.append(f"{panel.title} ({panel.metric}, {panel.unit})")
        mine = [s for s in stats if s.metric == panel.metric]
        if not mine:
            lines.append(f"  unavailable: {unavailable_reason(panel.name, sources)}")
            continue
        for s in mine:
            lines.append(f"  {s.key}  [{s.source}]  n={s.n}  mean {s.mean:.2f}  std {s.std:.2f}  "
                         f"min {s.min:.2f}  max {s.max:.2f}")
        for a in advice:
            if a.panel == panel.name:
                lines.append(f"  WARNING: {a.message}")
    lines.append("")
    lines.append("advice: " + (f"{len(advice)} threshold(s) exceeded" if advice else "no threshold exceeded"))
    return "\n".join(lines)
