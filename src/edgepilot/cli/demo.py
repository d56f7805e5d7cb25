"""`edgepilot demo`: generate a small CNN, convert it for every available engine, and benchmark each."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(out: Path = typer.Option(Path("workspace/demo"), help="Where to write models and results."),
             seconds: float = typer.Option(2.0, min=0.1, help="Time budget per benchmark."),
             threads: int = typer.Option(None, min=1, help="Runtime threads (default: the runtime's own).")) -> None:
        """Build a small CNN, convert it to every format an available engine runs, and benchmark each engine."""
        from edgepilot.demo import run_demo

        run_demo(out, seconds=seconds, threads=threads)
