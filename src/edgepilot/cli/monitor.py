"""`edgepilot monitor`: a live table of device metrics into a SQLite history; `report`, `export` and `sources`."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import typer

from edgepilot.errors import ConfigError


def default_db() -> Path:
    env = os.environ.get("EDGEPILOT_MONITOR_DB")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "edgepilot" / "monitor.db"


DB_OPTION = typer.Option(None, "--db", help="SQLite history file (default: $EDGEPILOT_MONITOR_DB or "
                                            "~/.local/share/edgepilot/monitor.db).")


def _open_store(db: Path | None, must_exist: bool = False):
    from edgepilot.monitor.store import MetricStore

    path = db or default_db()
    if must_exist and not path.exists():
        raise ConfigError(f"no monitor history at {path}", hint="run `edgepilot monitor --db ...` first")
    return MetricStore(path)


def _sample_json(sample) -> str:
    return json.dumps({"ts": sample.ts,
                       "readings": [{"key": r.key, "metric": r.metric, "labels": r.label_dict, "value": r.value,
                                     "unit": r.unit, "source": r.source} for r in sample.readings],
                       "sources": [asdict(s) for s in sample.sources]}, ensure_ascii=False)


def _alerts(rules_file: Path | None, thresholds_file: Path | None, alert_log: Path | None, webhook: str | None,
            spool: Path):
    from edgepilot.monitor.advisor import Thresholds
    from edgepilot.monitor.alerts import AlertEngine, JsonlSink, LogSink, WebhookSink, default_rules, load_rules

    rules = load_rules(rules_file) if rules_file else default_rules(Thresholds.load(thresholds_file))
    sinks: list = [LogSink()]
    if alert_log:
        sinks.append(JsonlSink(alert_log))
    if webhook:
        sinks.append(WebhookSink(webhook, spool))
    return AlertEngine(rules, sinks)


URL_OPTION = typer.Option(None, "--url", help="Read a running server or runtime through its Prometheus endpoint "
                                               "(http://HOST:PORT, /metrics is added) instead of this machine.")
TOKEN_OPTION = typer.Option(None, "--token", envvar="EDGEPILOT_METRICS_TOKEN",
                            help="Bearer token for a protected --url endpoint (or $EDGEPILOT_METRICS_TOKEN).")
TIMEOUT_OPTION = typer.Option(5.0, "--timeout", min=0.1, help="Seconds to wait for the --url endpoint.")

monitor_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False,
                          help="Watch CPU, memory, disk, network, GPU, temperature, power and inference live, "
                               "with history, alerts and a report.")


@monitor_app.callback()
def live(
    ctx: typer.Context,
    duration: float = typer.Option(0, min=0, help="Seconds to run (0: until Ctrl-C)."),
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between samples."),
    db: Path = DB_OPTION,
    no_store: bool = typer.Option(False, "--no-store", help="Do not write history."),
    pid: int = typer.Option(None, help="Also watch this process (RSS, fds, CPU); default: the monitor itself."),
    thresholds: Path = typer.Option(None, help="YAML of thresholds for the default alert rules."),
    rules: Path = typer.Option(None, help="YAML alert rules (`rules: [{name, metric, above|below, ...}]`)."),
    alert_log: Path = typer.Option(None, help="Append alerts to this JSONL file."),
    webhook: str = typer.Option(None, help="POST alerts to this URL (kept and retried while offline)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line per sample instead of the table."),
    url: str = URL_OPTION,
    token: str = TOKEN_OPTION,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Sample every source at --interval and show the latest values; history goes to --db.

    With --url, read a running `edgepilot serve` or `edgepilot run` (with `server:`) through its /metrics instead
    of this machine: requests, latency, queue and compute time, batch size per model and version, pipeline fps and
    drops, and the system readings that process exports. An unreachable endpoint is shown and tried again."""
    if ctx.invoked_subcommand is not None:
        return
    if url and pid is not None:
        raise ConfigError("--pid watches a process on this machine; it cannot be combined with --url",
                          hint="the server's /metrics already holds its own process readings")
    from rich.console import Console
    from rich.live import Live

    from edgepilot.monitor.collectors import default_collectors
    from edgepilot.monitor.live import render, render_frame
    from edgepilot.monitor.sampler import Monitor

    store = None if no_store else _open_store(db)
    spool = (store.path.parent if store else default_db().parent) / "webhook-spool.jsonl"
    engine = _alerts(rules, thresholds, alert_log, webhook, spool)
    if url:
        from edgepilot.monitor.remote import RemoteCollector

        collectors = [RemoteCollector(url, token=token, timeout_s=timeout)]
    else:
        collectors = default_collectors(pid=pid, tegrastats_interval_ms=int(interval * 1000))
    monitor = Monitor(collectors, store=store, alerts=engine)
    console = Console()
    start = time.time()
    n = 0

    def title() -> str:
        return (f"edgepilot monitor{' of ' + collectors[0].url if url else ''} — {time.time() - start:.0f} s, "
                f"every {interval:g} s"
                + (f", history in {store.path}" if store else ""))
    try:
        if as_json:
            n = monitor.run(interval_s=interval, duration_s=duration or None,
                            on_sample=lambda s: typer.echo(_sample_json(s)))
        else:
            # frames are cheap aligned text (transient); the full tables are printed once at the end
            with Live(console=console, auto_refresh=False, transient=True) as view:
                def show(s) -> None:
                    view.update(render_frame(s, title=title(), width=console.width), refresh=True)

                n = monitor.run(interval_s=interval, duration_s=duration or None, on_sample=show)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a run without --duration ends
    finally:
        monitor.close()
    if not as_json:
        if monitor.latest is not None:
            console.print(render(monitor.latest, title=title()))
        firing = engine.firing
        console.print(f"{n} samples" + (f" written to {store.path}" if store else "")
                      + (f"; alerts firing: {', '.join(f'{r} {k}' for r, k in firing)}" if firing else ""))


@monitor_app.command("report")
def report(
    db: Path = DB_OPTION,
    since: float = typer.Option(None, min=0, help="Only the last SECONDS of history (default: all)."),
    out: Path = typer.Option(Path("monitor-report.png"), help="Where to write the six-panel PNG."),
    thresholds: Path = typer.Option(None, help="YAML of thresholds (cpu_percent, memory_percent, "
                                               "temperature_celsius, inference_latency_ms, power_watts)."),
    cpu: float = typer.Option(None, help="CPU threshold, % (default 80)."),
    memory: float = typer.Option(None, help="Memory threshold, % (default 85)."),
    temperature: float = typer.Option(None, help="Temperature threshold, °C (default 70)."),
    inference_ms: float = typer.Option(None, help="Inference time threshold, ms (default 20)."),
    power_w: float = typer.Option(None, help="Power threshold, W (default 10)."),
    as_json: bool = typer.Option(False, "--json", help="Print statistics, advice and panel status as JSON."),
) -> None:
    """The reference article's six panels (CPU, memory, GPU, temperature, inference time, power) with mean lines,
    and mean / std / min / max with advice where a threshold was exceeded."""
    from edgepilot.monitor.advisor import Thresholds
    from edgepilot.monitor.report import build_report

    limits = Thresholds.load(thresholds, cpu_percent=cpu, memory_percent=memory, temperature_celsius=temperature,
                             inference_latency_ms=inference_ms, power_watts=power_w)
    store = _open_store(db, must_exist=True)
    try:
        rng = store.time_range()
        if rng is None:
            raise ConfigError(f"{store.path} holds no samples yet", hint="run `edgepilot monitor` first")
        rep = build_report(store, since=rng[1] - since if since else None, thresholds=limits, png=out)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"png": str(rep.png), "panels": rep.panels, "stats": [asdict(s) for s in rep.stats],
                               "advice": [asdict(a) for a in rep.advice], "thresholds": limits.model_dump()},
                              indent=2, ensure_ascii=False))
        return
    typer.echo(rep.text)
    typer.echo(f"\nplots: {rep.png}")


@monitor_app.command("export")
def export(
    out: Path = typer.Argument(..., help="File to write (.csv or .json)."),
    db: Path = DB_OPTION,
    fmt: str = typer.Option(None, "--format", help="csv or json (default: from the file's extension)."),
    since: float = typer.Option(None, min=0, help="Only the last SECONDS of history."),
) -> None:
    """Every stored point as CSV or JSON."""
    store = _open_store(db, must_exist=True)
    try:
        rng = store.time_range()
        n = store.export(out, fmt, since=rng[1] - since if since and rng else None)
    finally:
        store.close()
    typer.echo(f"{n} points written to {out}")


@monitor_app.command("sources")
def sources(as_json: bool = typer.Option(False, "--json", help="Print JSON."), url: str = URL_OPTION,
            token: str = TOKEN_OPTION, timeout: float = TIMEOUT_OPTION) -> None:
    """Every monitoring source: available or not, and why (with --url: the server's, as its /metrics says)."""
    from rich.console import Console
    from rich.table import Table

    from edgepilot.monitor.sampler import Monitor

    if url:
        from edgepilot.monitor.remote import RemoteReader, metrics_url, scrape

        endpoint = metrics_url(url)
        statuses = RemoteReader(endpoint).statuses(scrape(endpoint, token=token, timeout_s=timeout), "")
    else:
        monitor = Monitor()
        try:
            statuses = monitor.statuses()
        finally:
            monitor.close()
    if as_json:
        typer.echo(json.dumps([asdict(s) for s in statuses], indent=2, ensure_ascii=False))
        return
    t = Table(title=f"monitoring sources of {url}" if url else "monitoring sources")
    for col in ("source", "panels", "status", "what it reads, or why not"):
        t.add_column(col)
    for s in statuses:
        t.add_row(s.name, ", ".join(s.panels), "[green]available[/green]" if s.available else "[red]unavailable[/red]",
                  s.detail)
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
