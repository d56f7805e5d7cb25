"""`edgepilot doctor`: the host, and every engine with whether it can run here and why not."""
from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table


def doctor_report() -> dict:
    from edgepilot.engines import all_engines
    from edgepilot.host import host_info

    engines = []
    for name, engine in all_engines().items():
        ok, why = engine.available()
        engines.append({"name": name, "formats": sorted(f.value for f in engine.formats),
                        "devices": list(engine.devices), "available": ok,
                        "version": engine.version() if ok else None, "detail": why})
    from edgepilot.targets.profiles import detect_host

    return {"host": host_info().model_dump(), "target": detect_host().model_dump(), "engines": engines,
            "passes": pass_report(), "routes": routes()}


def pass_report() -> list[dict]:
    from edgepilot.passes import all_passes

    return [{"name": name, "from": sorted(f.value for f in p.consumes), "to": p.produces.value,
             "available": not p.missing(), "detail": "; ".join(p.missing())} for name, p in all_passes().items()]


def routes() -> list[dict]:
    """How the sources that have more than one conceivable route reach a family, and why that one."""
    import importlib.util

    litert_torch = importlib.util.find_spec("litert_torch") is not None
    return [{"from": "pytorch", "to": "tflite", "via": "torch-to-onnx → onnx-to-tflite (onnx2tf)",
             "detail": ("litert-torch is installed, but edgepilot converts through ONNX" if litert_torch else
                        "litert-torch is not used: it does not install beside the pinned torch (it pulls jax and "
                        "downgrades pydantic)")}]


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
        """Show this machine (CPU, memory, instruction sets, accelerators) and every engine's availability."""
        from edgepilot.cli import native_stdout_to_stderr

        with native_stdout_to_stderr():
            report = doctor_report()
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        console = Console()
        h = report["host"]
        host = Table(title="Host", show_header=False)
        for k, v in [("OS", h["os"]), ("arch", h["arch"]), ("CPU", h["cpu_model"]),
                     ("cores", f"{h['physical_cores']} physical, {h['logical_cores']} logical"),
                     ("RAM", f"{h['ram_bytes'] / 2**30:.1f} GiB"),
                     ("instruction sets", ", ".join(h["instruction_sets"]) or "none detected"),
                     ("accelerators", ", ".join(f"{a['name']} ({a['detail']})" for a in h["accelerators"])
                      or "none detected"),
                     ("Python", h["python"]),
                     ("edge class", f"{report['target']['klass']} — board: "
                      f"{report['target']['board'] or 'not a named profile'} ({report['target']['how']})")]:
            host.add_row(k, v)
        console.print(host)
        table = Table(title="Engines")
        for col in ("engine", "formats", "available", "detail"):
            table.add_column(col)
        for e in report["engines"]:
            table.add_row(e["name"], ", ".join(e["formats"]),
                          "[green]yes[/green]" if e["available"] else "[red]no[/red]", e["detail"])
        console.print(table)
        passes = Table(title="Passes")
        for col in ("pass", "from → to", "available", "detail"):
            passes.add_column(col)
        for p in report["passes"]:
            passes.add_row(p["name"], f"{', '.join(p['from'])} → {p['to']}",
                           "[green]yes[/green]" if p["available"] else "[red]no[/red]", p["detail"])
        console.print(passes)
        for r in report["routes"]:
            console.print(f"{r['from']} → {r['to']}: via {r['via']} ({r['detail']})")
