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
                shape: list[str] = typer.Option([], help="Count MACs at this input shape: NAME=1x3x640x640 "
                                                "(repeatable or comma-separated); needed for dynamic sizes."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Describe a model file: detected format, IO specs (with quantisation), params, size, MACs."""
        from dataclasses import replace

        from edgepilot.cli import native_stdout_to_stderr
        from edgepilot.formats import macs_at
        from edgepilot.model import Model
        from edgepilot.shapes import check_shapes, parse_shapes

        shapes = parse_shapes(shape)
        with native_stdout_to_stderr():
            m = Model.load(model)
            check_shapes(m.inputs, shapes)
            if shapes:
                macs, at = macs_at(m, shapes)
                m = replace(m, macs=macs, meta={**m.meta, "macs_at": at})
        if as_json:
            typer.echo(json.dumps(m.to_dict(), indent=2))
            return
        console = Console()
        console.print(f"[bold]{escape(str(m.path))}[/bold]  format: {m.format.value}  "
                      f"size: {m.size_bytes / 1024:.1f} KiB  params: {_count(m.params)}  MACs/sample: {_macs(m)}")
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


def _macs(m) -> str:
    """The count and the input shapes it holds at; or why there is none."""
    from edgepilot.shapes import dims

    at = m.meta.get("macs_at") or {}
    where = ", ".join(f"{k}={dims(v)}" for k, v in at.items() if v and all(isinstance(d, int) for d in v))
    if m.macs is not None:
        return _count(m.macs) + (f" at {escape(where)}" if where else "")
    if at and not where:  # a dynamic size was left open
        name = next(iter(at))
        return escape(f"unknown (dynamic input size; give --shape {name}=<dims>)")
    return "n/a"


def _count(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
