"""`edgepilot bench MODEL`: latency percentiles, throughput, load time and peak memory in a fresh process."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        model: Path = typer.Argument(..., help="Model file or directory."),
        engine: str = typer.Option(None, help="Engine to use (default: the first available for the format)."),
        threads: int = typer.Option(None, min=1, help="Threads for the runtime."),
        batch: int = typer.Option(None, min=1, help="Batch size of each call (default: the --shape's, else 1); "
                                  "a model with a fixed batch takes only its own."),
        runs: int = typer.Option(None, min=1, help="Number of timed calls (default 100)."),
        seconds: float = typer.Option(None, min=0.01, help="Time budget instead of a number of runs."),
        warmup: int = typer.Option(10, min=0, help="Untimed calls first."),
        concurrency: int = typer.Option(1, min=1, help="Parallel callers, each with its own session."),
        device: str = typer.Option(None, help="Device: cpu, cuda, gpu ... (default: the engine's first)."),
        shape: list[str] = typer.Option([], help="Shape of an input: NAME=1x3x224x224 (repeatable or "
                                        "comma-separated); needed for dynamic sizes."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Measure a model on one engine, in a fresh subprocess so nothing else counts against it."""
        from edgepilot.evaluate.benchmark import BenchConfig, benchmark
        from edgepilot.shapes import dims, parse_shapes

        cfg = BenchConfig(model=str(model), engine=engine, threads=threads, batch=batch, runs=runs,
                          seconds=seconds, warmup=warmup, concurrency=concurrency, device=device,
                          shapes=parse_shapes(shape))
        if as_json:
            typer.echo(benchmark(cfg).model_dump_json(indent=2))
            return
        console = Console(stderr=False)
        with console.status(f"benchmarking {model.name} ..."):
            r = benchmark(cfg)
        lat = r.latency
        t = Table(title=f"{Path(r.model).name} on {r.engine} {r.engine_version or ''}".strip(),
                  caption="inputs: " + ", ".join(f"{k}={dims(v)}" for k, v in lat.shapes.items()))
        for col in ("batch", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "throughput /s",
                    "load ms", "peak RSS MiB", "outside CPU %"):
            t.add_column(col, justify="right")
        t.add_row(str(lat.batch), str(lat.runs), f"{lat.p50_ms:.3f}", f"{lat.p90_ms:.3f}", f"{lat.p99_ms:.3f}",
                  f"{lat.mean_ms:.3f} ± {lat.std_ms:.3f}", f"{lat.throughput_sps:.1f}", f"{r.load_ms:.1f}",
                  f"{r.peak_rss_mb:.1f}", f"{r.outside_cpu_load_pct:.1f}")
        console.print(t)
        if r.outside_cpu_load_pct > 20:
            console.print(f"[yellow]note: other processes kept {r.outside_cpu_load_pct:.0f} % of the CPU busy "
                          "during the run; the figures are noisy[/yellow]")
