"""`edgepilot demo`: train the article's MNIST CNN, optimise it into every available format, report;
`edgepilot demo faces`: the edge runtime with a real face detector on a video of real photos."""
from __future__ import annotations

from pathlib import Path

import typer

demo_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, add_completion=False,
                       help="Built-in demos: the optimise-and-evaluate loop (default), and `faces`, the runtime.")


@demo_app.callback()
def demo(ctx: typer.Context,
         out: Path = typer.Option(Path("workspace/demo"), help="Where to write models and the report."),
         dataset: str = typer.Option("mnist", help="mnist (falls back to digits offline) or digits."),
         epochs: int = typer.Option(2, min=1, help="Training epochs."),
         train_samples: int = typer.Option(20000, min=100, help="Training images used."),
         seconds: float = typer.Option(1.0, min=0.1, help="Latency time budget per variant."),
         threads: int = typer.Option(None, min=1, help="Runtime threads (default: the runtime's own)."),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show TensorFlow's, the converters' and "
                                      "the runtimes' own output (it always goes to OUT/demo.log).")) -> None:
    """Train the reference article's CNN, convert it into every format an engine here runs, and report."""
    if ctx.invoked_subcommand is not None:
        return
    from edgepilot.demos.mnist import run_demo

    run_demo(out, dataset=dataset, epochs=epochs, train_samples=train_samples, seconds=seconds, threads=threads,
             verbose=verbose)


@demo_app.command()
def faces(out: Path = typer.Option(Path("workspace/faces"), help="Where to write the video, pipeline and results."),
          broker: str = typer.Option(None, help="host:port of an MQTT broker to publish the alerts to.")) -> None:
    """BlazeFace on a video made from scikit-image's photos: boxes, an annotated video, alerts (and MQTT)."""
    from edgepilot.cli.run import stats_line
    from edgepilot.demos.faces import run_faces_demo
    from edgepilot.errors import ConfigError

    where = None
    if broker:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--broker {broker!r}: expected host:port")
        where = (host, int(port))
    summary = run_faces_demo(out, where)
    typer.echo(stats_line(summary))
    typer.echo(f"{summary['counters'].get('events', 0)} event(s); annotated video: {out / 'annotated.mp4'}; "
               f"results: {out / 'results.jsonl'}; pipeline: {out / 'pipeline.yaml'}")


def register(app: typer.Typer) -> None:
    app.add_typer(demo_app, name="demo")
