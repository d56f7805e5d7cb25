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


def load_registry(entries: tuple[str, ...]) -> dict[str, type]:
    """Import "module:Class" entries and key the classes by their `name` (registries of engines, passes)."""
    classes = {}
    for entry in entries:
        module, cls = entry.split(":")
        found = getattr(importlib.import_module(module), cls)
        classes[found.name] = found
    return classes
