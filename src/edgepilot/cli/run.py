"""`edgepilot run pipeline.yaml`: the edge runtime, from sources to sinks, with live statistics."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import typer


def stats_line(s: dict) -> str:
    c = s["counters"]
    stages = " ".join(f"{k} {v['p50']:.1f}" for k, v in s["stages_ms"].items())
    skipped = c.get("skipped_quality", 0) + c.get("skipped_input", 0)  # failed the checks, or unreadable
    return (f"{s['fps']:.1f} fps | done {c.get('completed', 0)} dropped {c.get('dropped', 0)} "
            f"skipped {skipped} errors {c.get('errors', 0)} events {c.get('events', 0)} | "
            f"queue {s['queue_depth']} | p50 ms: {stages}")


def register(app: typer.Typer) -> None:
    @app.command()
    def run(config: Path = typer.Argument(..., help="Pipeline YAML (model, sources, preprocess, postprocess, "
                                                     "scheduler, rules, sinks)."),
            duration: float = typer.Option(None, min=0.1, help="Stop after this many seconds."),
            max_items: int = typer.Option(None, min=1, help="Stop after taking this many items from the sources."),
            stats_interval: float = typer.Option(5.0, min=0.5, help="Seconds between statistics lines on stderr."),
            shape: list[str] = typer.Option([], help="Shape of a dynamic input: NAME=1x3x640x640 (repeatable or "
                                            "comma-separated); overrides model.input_shapes."),
            check: bool = typer.Option(False, "--check", help="Load the model, check the decoder on its outputs and "
                                       "open every source once, then exit without running."),
            as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON on stdout.")) -> None:
        """Run a pipeline until its sources end (files), --duration passes, or Ctrl-C / SIGTERM."""
        from edgepilot.runtime.pipeline import Pipeline, load_pipeline_config
        from edgepilot.shapes import parse_shapes

        if hasattr(signal, "SIGHUP"):  # a reload while starting would otherwise end the process (a "clean" signal)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the model watch notices a change made meanwhile anyway
        cfg = load_pipeline_config(config)
        shapes = parse_shapes(shape)
        if shapes:
            cfg.model.input_shapes = {k: list(v) for k, v in shapes.items()}
        if check:
            typer.echo(f"{config}: valid ({Pipeline.check(cfg)})")
            return
        import os

        from edgepilot.deploy.probation import HEALTH_ENV, RuntimeHealth

        # under the device agent: report health for its probation, from before the model loads (a crash counts)
        health = RuntimeHealth(Path(os.environ[HEALTH_ENV]), config) if os.environ.get(HEALTH_ENV) else None
        pipeline = Pipeline(cfg)
        for sig in (signal.SIGINT, signal.SIGTERM):  # finish what is in flight, flush sinks, then exit
            signal.signal(sig, lambda *_: pipeline.stop())
        if hasattr(signal, "SIGHUP"):  # systemctl reload: swap in a changed model now (model_watch.py)
            signal.signal(signal.SIGHUP, lambda *_: pipeline.reload())
        from edgepilot.deploy.notify import notify

        def on_stats(s: dict) -> None:
            sys.stderr.write(stats_line(s) + "\n")
            if health is not None:
                health.update(s)
            notify("WATCHDOG=1")  # systemd's watchdog is fed by the pipeline's own loop, not by a side thread

        def on_swap(event: dict) -> None:  # a model swapped in place is no start: the report follows the model
            if health is not None:
                health.swapped(event, pipeline.snapshot())

        notify("READY=1")
        summary = pipeline.run(duration=duration, max_items=max_items, stats_interval_s=stats_interval,
                               on_stats=on_stats, on_swap=on_swap)
        sys.stderr.write(stats_line(summary) + "\n")
        if health is not None:
            health.stop(summary)  # a clean end: the next start is not a crash
        if pipeline.restart_reason:  # Restart=on-failure starts it again, on the new pipeline
            sys.stderr.write(f"restart: {pipeline.restart_reason}\n")
            raise typer.Exit(75)
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
        for problem in summary["problems"]:
            sys.stderr.write(f"error: {problem}\n")
        if summary["problems"]:
            raise typer.Exit(1)
