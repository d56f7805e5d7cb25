"""Shared fixtures: tiny models built once per test session."""
from __future__ import annotations

import pytest

from builders import build
from edgepilot.model import Format


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """`built(fmt, kind)` converts a tiny model to `fmt` once and returns a builders.Built."""
    cache = {}
    root = tmp_path_factory.mktemp("models")

    def get(fmt: Format, kind: str):
        key = (fmt, kind)
        if key not in cache:
            cache[key] = build(fmt, kind, root / fmt.value / kind)
        return cache[key]

    return get


from brokers import mosquitto  # noqa: E402,F401  (the real-broker fixture, shared by the runtime tests)
