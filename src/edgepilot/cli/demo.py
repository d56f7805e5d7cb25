"""`edgepilot demo`: train the article's MNIST CNN, optimise it into every available format, report."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(out: Path = typer.Option(Path("workspace/demo"), help="Where to write models and the report."),
             dataset: str = typer.Option("mnist", help="mnist (falls back to digits offline) or digits."),
             epochs: int = typer.Option(2, min=1, help="Training epochs."),
             train_samples: int = typer.Option(20000, min=100, help="Training images used."),
             seconds: float = typer.Option(1.0, min=0.1, help="Latency time budget per variant."),
             threads: int = typer.Option(None, min=1, help="Runtime threads (default: the runtime's own).")) -> None:
        """Train the reference article's CNN, convert it into every format an engine here runs, and report."""
        from edgepilot.demo import run_demo

        run_demo(out, dataset=dataset, epochs=epochs, train_samples=train_samples, seconds=seconds, threads=threads)
