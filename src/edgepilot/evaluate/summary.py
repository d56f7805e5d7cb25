"""The console summary of an optimize run: the variants table, every failure and flag, where the report is."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgepilot.evaluate.report import fmt


def print_summary(console: Console, report, records, out: Path, log: Path | None = None) -> None:
    """The variants table, then every failure, flag and error, then where the report and the run's log are."""
    own = f" ({report.source_precision} weights)" if report.source_precision else ""
    t = Table(title=f"{Path(report.source).name}{own}: {len(report.variants)} variants, {report.task or 'no task'}; "
                    f"agreement with the reference {report.reference}")
    labels = ["top-1 (labels)"] if report.labelled else []  # without labels there is no accuracy to show
    for col in ("variant", "engine", "KiB", *labels, report.task_metric or "agreement", "p50 ms", "p99 ms",
                "peak MiB"):
        t.add_column(col, justify="left" if col in ("variant", "engine") else "right", no_wrap=True)
    for r in report.variants:
        lat, a = r.latency, r.agreement
        t.add_row(r.variant, r.engine or "-", f"{r.size_bytes / 1024:.1f}", *([fmt(r.top1, ".4f")] if labels else []),
                  fmt(a and a.value, ".4f"), fmt(lat and lat.p50_ms, ".3f"), fmt(lat and lat.p99_ms, ".3f"),
                  fmt(r.peak_rss_mb, ".0f"))
    console.print(t)
    by_reason: dict[tuple[str, str | None], list[str]] = {}  # one line for the variants a reason shares
    for rec in records:
        if rec.status != "ok":
            by_reason.setdefault((rec.status, rec.reason), []).append(rec.variant)
    for (status, reason), variants in by_reason.items():
        console.print(f"[yellow]{escape(', '.join(variants))}: {status}: {escape(str(reason))}[/yellow]",
                      soft_wrap=True)
    for r in report.variants:
        for note in r.flags + ([r.error] if r.error else []):
            console.print(f"[yellow]{r.variant}: {escape(note)}[/yellow]", soft_wrap=True)
    console.print(f"report: {out / 'report.html'} ({out / 'report.md'})  lineage: {out / 'lineage.json'}  "
                  f"log: {log or out / 'optimize.log'}", soft_wrap=True)
