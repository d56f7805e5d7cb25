"""The report's figures as PNG bytes: task metric, latency and size per variant, and the latency–accuracy Pareto."""
from __future__ import annotations

import io

from edgepilot.optional import require


def _figure(width: float = 8, height: float = 4):
    matplotlib = require("matplotlib", "report")
    matplotlib.use("Agg")  # no display on devices and CI
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=110)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def bars(names: list[str], values: list[float | None], title: str, unit: str, colors: list[str] | None = None) -> bytes:
    """One bar per variant; a variant without a value gets no bar and an 'n/a' label, never a zero."""
    plt, fig, ax = _figure()
    xs = range(len(names))
    shown = [v if v is not None else 0.0 for v in values]
    ax.bar(xs, shown, color=colors or "#4C72B0")
    top = max((v for v in values if v is not None), default=1.0)
    for x, v in zip(xs, values):
        ax.text(x, (v or 0) + top * 0.01, "n/a" if v is None else f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _png(plt, fig)


def pareto(points: dict[str, tuple[float, float]], title: str = "Latency vs accuracy",
           ylabel: str = "top-1 accuracy") -> bytes:
    """Each variant at (p50 latency, its score); the variants no other beats on both axes are joined."""
    plt, fig, ax = _figure(7, 4.5)
    front = [n for n, (lat, acc) in points.items()
             if not any(l2 <= lat and a2 >= acc and (l2, a2) != (lat, acc) for l2, a2 in points.values())]
    for name, (lat, acc) in points.items():
        on = name in front
        ax.scatter(lat, acc, s=40 if on else 25, color="#C44E52" if on else "#4C72B0", zorder=3)
    # Only the front is labelled: variants often tie on accuracy, and their labels would pile up.
    for i, name in enumerate(sorted(front, key=lambda n: points[n])):
        ax.annotate(name, points[name], fontsize=8, xytext=(6, 6 + 10 * (i % 2)), textcoords="offset points")
    if len(front) > 1:
        xs, ys = zip(*sorted(points[n] for n in front))
        ax.plot(xs, ys, color="#C44E52", alpha=0.6, zorder=2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.margins(x=0.08, y=0.15)  # room for the labels inside the axes
    ax.set_xlabel("p50 latency (ms, batch 1)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (labelled: the Pareto front; the rest are in the table)")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def bit_depth(rows: list[dict]) -> bytes:
    """SQNR (dB) of all weights after symmetric quantisation to each bit depth, per tensor and per channel."""
    plt, fig, ax = _figure(7, 4)
    for scheme, color in (("per-tensor", "#4C72B0"), ("per-channel", "#DD8452")):
        pts = sorted((r["bits"], r["sqnr_db"]) for r in rows if r["scheme"] == scheme and r["sqnr_db"] is not None)
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, label=scheme)
            for b, db in pts:
                ax.annotate(f"{db:.1f} dB", (b, db), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xticks([4, 8, 16], ["4", "8", "16"])
    ax.set_xlabel("bits per weight (32 = float32: no error)")
    ax.set_ylabel("SQNR, dB (higher is better)")
    ax.set_title("Weight quantisation error by bit depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)
