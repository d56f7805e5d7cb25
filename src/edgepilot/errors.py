"""The one exception tree: every user-facing failure is an EdgepilotError with a hint."""
from __future__ import annotations

from collections.abc import Callable


class EdgepilotError(Exception):
    """A failure the user can act on. The CLI prints it on one line; the server answers it as JSON."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ModelError(EdgepilotError):
    """A model file is missing, corrupt, truncated or of a format edgepilot does not read."""

    exit_code = 2
    http_status = 422


class InputError(EdgepilotError):
    """A feed or a dataset does not fit the model: wrong names, shapes or dtypes."""

    exit_code = 2
    http_status = 400


class NotFoundError(EdgepilotError):
    """A named thing (a served model, a version) does not exist."""

    exit_code = 2
    http_status = 404


class ConfigError(EdgepilotError):
    """A config file or command-line option is invalid."""

    exit_code = 2
    http_status = 400


class UnavailableError(EdgepilotError):
    """A runtime, pass or device feature cannot run here (missing package, no GPU ...)."""

    exit_code = 3
    http_status = 503


class RuntimeFailure(EdgepilotError):
    """A runtime failed while loading or running a model that passed validation."""

    exit_code = 4
    http_status = 500


class ConversionError(EdgepilotError):
    """A pass could not turn a model into another: the converter refused the model or broke on it."""

    exit_code = 4
    http_status = 500


def first_line(e: BaseException) -> str:
    """A foreign exception in one line: its first non-empty line, or its type's name when it says nothing."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def last_line(e: BaseException) -> str:
    """A foreign exception in one line: its last non-empty line (where converters that dump their log or a stack
    put the reason), or its type's name when it says nothing."""
    for line in reversed(str(e).splitlines()):
        if line.strip():
            return line.strip()
    return type(e).__name__


def translate(e: BaseException, cls: type[EdgepilotError], context: str, hint: str | None = None, *,
              line: Callable[[BaseException], str] = first_line, limit: int | None = None) -> EdgepilotError:
    """The edgepilot error for a foreign one at a boundary: `raise translate(e, ModelError, f"{path}: onnxruntime
    cannot load it") from e` reads "…: onnxruntime cannot load it (<first line>)". `line`: which line of the
    foreign message to quote (first_line or last_line); `limit`: at most that many of its characters."""
    said = line(e)
    return cls(f"{context} ({said[:limit] if limit else said})", hint=hint)


def missing_extra(package: str, extra: str) -> UnavailableError:
    """The error for an optional dependency that is not installed."""
    return UnavailableError(
        f"the Python package '{package}' is not installed",
        hint=f"pip install 'edgepilot[{extra}]'",
    )


class BundleError(EdgepilotError):
    """An update bundle was refused: bad signature, tampered or unsafe contents, expired, a downgrade."""

    exit_code = 2
    http_status = 422
