"""`edgepilot targets` and `edgepilot select REPORT --target NAME`: hardware profiles and the variant to ship."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgepilot.cli import wide_console
from edgepilot.errors import ConfigError


def print_selection(console: Console, sel) -> None:
    t = Table(title=f"variants that fit {sel.target}, best first")
    for col in ("variant", "engine", "p50 ms", "p95 ms", "latency", "top-1 drop", "memory fit"):
        t.add_column(col, no_wrap=col != "memory fit")
    for c in sel.ranked:
        t.add_row(c.variant, c.engine, f"{c.p50_ms:.3f}" if c.p50_ms is not None else "-",
                  f"{c.p95_ms:.3f}" if c.p95_ms is not None else "-", c.latency,
                  f"{c.accuracy_drop:+.4f}" if c.accuracy_drop is not None else "-", c.fit)
    if sel.ranked:
        console.print(t)
    for c in sel.dropped:
        console.print(f"[yellow]dropped {c.variant}: {'; '.join(c.reasons)}[/yellow]", soft_wrap=True)
    console.print(("[bold green]choice: " if sel.chosen else "[bold red]") + sel.message, soft_wrap=True)
    if any(c.latency == "estimated" for c in sel.ranked):
        console.print("estimated = measured on this host, scaled by the board's documented factors "
                      "(src/edgepilot/targets/profiles.yaml); measure on the board to confirm")


def register(app: typer.Typer) -> None:
    @app.command()
    def targets(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List the hardware classes and named boards (add your own with EDGEPILOT_PROFILES=file.yaml)."""
        from edgepilot.targets.profiles import detect_host, load_profiles

        p = load_profiles()
        if as_json:
            typer.echo(json.dumps(p.model_dump(), indent=2))
            return
        console = wide_console(120)
        classes = Table(title="Hardware classes")
        for col in ("class", "examples", "compute", "memory", "power", "runtimes"):
            classes.add_column(col)
        for key, c in p.classes.items():
            classes.add_row(key, ", ".join(c.examples), c.compute, c.memory, c.power, ", ".join(c.runtimes))
        console.print(classes)
        boards = Table(title="Boards")
        for col in ("target", "class", "CPU", "RAM", "flash", "accelerators", "power", "runtimes"):
            boards.add_column(col)
        for key, b in p.boards.items():
            ram = f"{b.ram_bytes / 2**30:g} GiB" if b.ram_bytes >= 2**30 else f"{b.ram_bytes / 1024:g} KiB"
            flash = f"{b.flash_bytes / 2**20:g} MiB" if b.flash_bytes else "-"
            boards.add_row(key, b.klass, b.cpu, ram, flash, ", ".join(b.accelerators) or "-", f"{b.power_w:g} W",
                           ", ".join(b.runtimes))
        console.print(boards)
        host = detect_host()
        console.print(f"this host: class {host.klass}, board {host.board or 'not a named profile'} ({host.how})")

    @app.command()
    def select(
        report: Path = typer.Argument(..., help="report.json written by edgepilot optimize."),
        target: str = typer.Option(..., help="A board from `edgepilot targets`, or host."),
        max_latency_ms: float = typer.Option(None, min=0, help="p95 latency gate."),
        max_accuracy_drop: float = typer.Option(0.01, min=0, help="Task metric lost vs the reference: top-1 with "
                                                "labels, else 1 - agreement."),
        min_agreement: float = typer.Option(None, min=0, max=1, help="Least agreement with the reference on the "
                                            "task metric."),
        max_memory_mb: float = typer.Option(None, min=0, help="Memory gate (peak RSS; tensor arena on MCUs)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Pick the variant to ship for TARGET under the gates, and say why every other one lost."""
        from edgepilot.evaluate.report import Report
        from edgepilot.targets.select import Gates
        from edgepilot.targets.select import select as choose

        try:
            rep = Report.model_validate_json(report.read_text())
        except OSError as e:
            raise ConfigError(f"{report}: cannot read it ({e.strerror})") from e
        except ValueError as e:
            raise ConfigError(f"{report}: not an edgepilot report.json",
                              hint="run edgepilot optimize first; it writes report.json") from e
        sel = choose(rep, target, Gates(max_latency_ms=max_latency_ms, max_accuracy_drop=max_accuracy_drop,
                                        min_agreement=min_agreement, max_memory_mb=max_memory_mb))
        if as_json:
            typer.echo(sel.model_dump_json(indent=2))
        else:
            print_selection(wide_console(120), sel)
        if sel.chosen is None:
            raise typer.Exit(1)
