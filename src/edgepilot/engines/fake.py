"""A scripted engine for tests (like httpx's MockTransport): a Python function gives the outputs, not a runtime.

Tests of selection, gates and the pipeline use it to make an exact behaviour by construction — a model that
is wrong on purpose, slow on purpose or fails on one input — on any CPU. It is not in the engine registry;
`registered()` adds it for the duration of a `with` block, in this process only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session
from edgepilot.model import Format, Model

Handler = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class FakeSession(Session):
    def __init__(self, model: Model, handler: Handler, opts: EngineOptions):
        self.inputs, self.outputs = model.inputs, model.outputs
        self.threads, self.precision = opts.threads, opts.precision or "fp32"
        self._handler = handler
        self.calls = 0

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return self._handler(feeds)


class FakeEngine(Engine):
    """Runs any model file through `handler(feeds) -> outputs`; make one with `FakeEngine.scripted(handler)`."""

    name = "fake"
    formats = frozenset(Format)
    package = "numpy"
    extra = "dev"
    handler: Handler

    @classmethod
    def scripted(cls, handler: Handler, name: str = "fake") -> type[FakeEngine]:
        """An engine class whose sessions answer with `handler` (engines are built without arguments)."""
        return type(f"FakeEngine_{name}", (cls,), {"name": name, "handler": staticmethod(handler)})

    def _open(self, model: Model, opts: EngineOptions) -> Session:
        return FakeSession(model, type(self).handler, opts)


@contextmanager
def registered(engine: type[FakeEngine]) -> Iterator[type[FakeEngine]]:
    """Make `engine` known to get_engine/open_session by its name until the block ends."""
    from edgepilot.engines import all_engines

    engines = all_engines()
    if engine.name in engines:
        raise ValueError(f"an engine named {engine.name!r} is already registered")
    engines[engine.name] = engine
    try:
        yield engine
    finally:
        engines.pop(engine.name, None)
