"""Import optional dependencies, or fail with an error that names the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from edgepilot.errors import missing_extra


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise missing_extra(module.split(".")[0], extra) from e
