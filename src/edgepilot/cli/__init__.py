"""The `edgepilot` command: a Typer app with one thin module per command group."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

import typer

from edgepilot.errors import EdgepilotError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="edgepilot: take a trained model to a monitored, updatable edge deployment.")


def _register() -> None:
    from edgepilot.cli import bench, demo, deploy, doctor, inspect, monitor, optimize, run, serve, targets

    for module in (doctor, inspect, bench, optimize, targets, run, serve, demo, monitor, deploy):
        module.register(app)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    level = os.environ.get("EDGEPILOT_LOG", "WARNING").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.root.handlers:  # a JSON log file may take INFO; the terminal stays at `level`
        handler.setLevel(level)
    _register()
    try:
        app()
    except EdgepilotError as e:
        sys.stderr.write(f"error: {e.message}" + (f" (hint: {e.hint})" if e.hint else "") + "\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


@contextmanager
def native_stdout_to_stderr():
    """Send what native libraries print to fd 1 (MNN, ncnn ...) to stderr, so --json output stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def wide_console(min_width: int = 100):
    """A rich Console at least `min_width` wide: a pipe reports 80 columns, too narrow for the tables."""
    from rich.console import Console

    return Console(width=max(Console().width, min_width))
