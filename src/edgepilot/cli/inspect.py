"""`edgepilot inspect MODEL`: format, inputs and outputs, parameters, size and MACs."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command()
    def inspect(model: Path = typer.Argument(..., help="Model file or SavedModel directory."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Describe a model file: detected format, IO specs (with quantisation), params, size, MACs."""
        from edgepilot.cli import native_stdout_to_stderr
        from edgepilot.model import Model

        with native_stdout_to_stderr():
            m = Model.load(model)
        if as_json:
            typer.echo(json.dumps(m.to_dict(), indent=2))
            return
        console = Console()
        console.print(f"[bold]{escape(str(m.path))}[/bold]  format: {m.format.value}  "
                      f"size: {m.size_bytes / 1024:.1f} KiB  params: {_count(m.params)}  MACs/sample: {_count(m.macs)}")
        for title, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
            t = Table(title=title)
            for col in ("name", "dtype", "shape", "quantisation"):
                t.add_column(col)
            for s in specs:
                q = s.quantization
                qs = "" if q is None else (f"scale={q.scale[0]:.6g} zero_point={q.zero_point[0]}" if q.per_tensor
                                           else f"per-channel ({len(q.scale)}) axis {q.axis}")
                t.add_row(escape(s.name), s.dtype, escape(s.shape_str()), qs)  # shapes look like markup
            console.print(t)


def _count(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
