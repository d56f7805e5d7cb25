"""The one exception tree: every user-facing failure is an EdgepilotError with a hint."""
from __future__ import annotations


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
