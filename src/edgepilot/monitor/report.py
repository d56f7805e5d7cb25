"""`monitor report`: the reference article's six panels with mean lines as a PNG, and the text report with advice."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from edgepilot.monitor.advisor import (
    PANELS,
    Advice,
    SeriesStats,
    Thresholds,
    advise,
    stats_of,
    text_report,
    unavailable_reason,
)
from edgepilot.monitor.store import MetricStore, Series
from edgepilot.optional import require

_MAX_LINES = 8  # more series than this in one panel (e.g. 20 thermal zones) only clutters it; the rest are named


@dataclass
class MonitorReport:
    stats: list[SeriesStats]
    advice: list[Advice]
    text: str
    panels: dict[str, str] = field(default_factory=dict)  # panel -> "plotted: N series" or "unavailable: reason"
    png: Path | None = None


def build_report(store: MetricStore, *, since: float | None = None, until: float | None = None,
                 thresholds: Thresholds | None = None, png: str | Path | None = None) -> MonitorReport:
    thresholds = thresholds or Thresholds()
    wanted = {p.metric for p in PANELS}
    series = [s for s in store.series(since=since, until=until) if s.metric in wanted]
    sources = store.sources()
    stats = [stats_of(s.key, s.metric, s.labels, s.unit, s.source, s.values) for s in series]
    advice = advise(stats, {s.key: s.values for s in series}, thresholds)
    window = (min(s.ts[0] for s in series), max(s.ts[-1] for s in series)) if series else store.time_range()
    panels, why = {}, {}
    for p in PANELS:
        mine = [s for s in series if p.shows(s.metric, s.labels)]
        panels[p.name] = (f"plotted: {len(mine)} series" if mine
                          else f"unavailable: {unavailable_reason(p.name, sources)}")
        why[p.name] = "unavailable:\n" + unavailable_reason(p.name, sources, sep="\n")
    report = MonitorReport(stats, advice, text_report(stats, advice, sources, window), panels)
    if png is not None:
        report.png = render_png(series, why, thresholds, Path(png))
    return report


def _with_gaps(ts: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    """Insert a break where samples are missing (the monitor was stopped), so no line is drawn across it."""
    if len(ts) < 3:
        return ts, values
    steps = sorted(b - a for a, b in zip(ts, ts[1:]))
    gap = 3 * steps[len(steps) // 2]
    xs, ys = [ts[0]], [values[0]]
    for (a, b), v in zip(zip(ts, ts[1:]), values[1:]):
        if b - a > gap:
            xs.append((a + b) / 2)
            ys.append(float("nan"))
        xs.append(b)
        ys.append(v)
    return xs, ys


def render_png(series: list[Series], why: dict[str, str], thresholds: Thresholds, path: Path) -> Path:
    mpl = require("matplotlib", "report")
    mpl.use("Agg")  # files only: no display on a device
    import matplotlib.pyplot as plt

    if not path.suffix:  # matplotlib would add ".png" itself; name the file it really writes
        path = path.with_suffix(".png")
    t0 = min((s.ts[0] for s in series), default=0.0)
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    try:
        for ax, p in zip(axes.ravel(), PANELS):
            ax.set_title(p.title, fontsize=13, fontweight="bold")
            mine = [s for s in series if p.shows(s.metric, s.labels)]
            if not mine:
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_color("#bbbbbb")
                lines = [w for para in why[p.name].splitlines() for w in textwrap.wrap(para, 62,
                                                                                          subsequent_indent="  ")]
                ax.text(0.03, 0.97, "\n".join(lines[:24]), ha="left", va="top", fontsize=8, color="#555555",
                        transform=ax.transAxes)
                continue
            shown = sorted(mine, key=lambda s: -max(s.values))[:_MAX_LINES]
            for s in shown:
                x, y = _with_gaps([t - t0 for t in s.ts], s.values)
                label = ",".join(f"{k}={v}" for k, v in s.labels.items()) or s.metric
                mean = sum(s.values) / len(s.values)
                (line,) = ax.plot(x, y, linewidth=1.6, marker="." if len(x) < 40 else None,
                                  label=f"{label} ({s.source.split(':')[0]})")
                ax.axhline(mean, color=line.get_color(), linestyle="--", linewidth=1,
                           label=f"mean {mean:.2f} {s.unit}")
            if p.threshold is not None:
                limit = getattr(thresholds, p.threshold)
                top = max(max(s.values) for s in shown)
                if limit <= top * 1.5:  # draw the threshold only where it sits near the data
                    ax.axhline(limit, color="red", linestyle=":", linewidth=1.2, label=f"threshold {limit:g} {p.unit}")
            if len(mine) > len(shown):
                ax.text(0.01, 0.01, f"+{len(mine) - len(shown)} more series in the text report", fontsize=8,
                        transform=ax.transAxes, color="#666666")
            if p.unit == "%":
                ax.set_ylim(bottom=0, top=max(105, ax.get_ylim()[1]))
            ax.set_xlabel("time (s)")
            ax.set_ylabel(p.unit)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        fig.suptitle("edgepilot monitor report", fontsize=15)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path
