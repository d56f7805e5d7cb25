"""The `edgepilot` command: a Typer app with one thin module per command group."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from pydantic import ValidationError

from edgepilot.console import wide_console as wide_console  # the commands' console, re-exported for them
from edgepilot.errors import ConfigError, EdgepilotError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="edgepilot: take a trained model to a monitored, updatable edge deployment.")


def _register() -> None:
    from edgepilot.cli import bench, demo, deploy, doctor, fleet, inspect, monitor, optimize, run, serve, targets

    for module in (doctor, inspect, bench, optimize, targets, run, serve, demo, monitor, deploy, fleet):
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
        _fail(f"{e.message}" + (f" (hint: {e.hint})" if e.hint else ""), e.exit_code)
    except ValidationError as e:  # options checked by a pydantic model: a usage error
        first = e.errors()[0]
        _fail(f"{'.'.join(map(str, first['loc'])) or 'option'}: {first['msg']}", 2)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        _fail(f"{e.strerror}: {e.filename}", 2)  # a path given on the command line that cannot be used so
    except OSError as e:
        _fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""), 1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def output_folder(path: Path, option: str = "--out") -> Path:
    """`path` as a folder to write into: a file there is a usage error, said before any work starts."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder", hint="give a folder; it is created if missing")
    return path


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
