"""The engine registry: every runtime edgepilot can run a model on, and how to pick one."""
from __future__ import annotations

from functools import cache

from edgepilot.engines.base import Engine, EngineOptions, Session
from edgepilot.errors import UnavailableError
from edgepilot.model import Model
from edgepilot.optional import load_registry

# In order of preference when a format can run on several runtimes. A new runtime is one line here.
_REGISTRY = (
    "edgepilot.engines.onnxruntime:OnnxRuntimeEngine",
    "edgepilot.engines.litert:LiteRTEngine",
    "edgepilot.engines.openvino:OpenVINOEngine",
    "edgepilot.engines.tensorrt:TensorRTEngine",
    "edgepilot.engines.mnn:MNNEngine",
    "edgepilot.engines.ncnn:NcnnEngine",
    "edgepilot.engines.micro:MicroEngine",
)

__all__ = ["Engine", "EngineOptions", "Session", "all_engines", "get_engine", "engine_for", "open_session"]


@cache
def all_engines() -> dict[str, type[Engine]]:
    """Every registered engine class by name (importing them is cheap: runtimes load lazily)."""
    return load_registry(_REGISTRY)


def get_engine(name: str) -> type[Engine]:
    try:
        return all_engines()[name]
    except KeyError:
        raise UnavailableError(f"unknown engine {name!r}", hint=f"choose one of {', '.join(all_engines())}") from None


def engine_for(model: Model, name: str | None = None) -> type[Engine]:
    """The named engine, checked against the model, or the first available one that runs its format."""
    if name is not None:
        engine = get_engine(name)
        if model.format not in engine.formats:
            raise UnavailableError(
                f"engine {name!r} does not run {model.format.value} models",
                hint="it runs " + ", ".join(sorted(f.value for f in engine.formats)))
        ok, why = engine.available()
        if not ok:
            raise UnavailableError(f"engine {name!r} is not available: {why}")
        return engine
    reasons = []
    for engine in all_engines().values():
        if model.format in engine.formats:
            ok, why = engine.available()
            if ok:
                return engine
            reasons.append(f"{engine.name}: {why}")
    raise UnavailableError(f"no available engine runs {model.format.value} models",
                           hint="; ".join(reasons) or "convert the model first (edgepilot optimize)")


def open_session(model: Model, engine: str | None = None, *, threads: int | None = None,
                 device: str | None = None, precision: str | None = None, cache_dir: str | None = None,
                 spin_wait: bool | None = None) -> Session:
    """Open `model` on the named (or first available) engine with EngineOptions: on its first device unless
    one is named, in fp32 unless a precision is named (engines that choose their arithmetic), keeping
    compiled models in `cache_dir` on engines that have such a cache (`caches_compiled`)."""
    cls = engine_for(model, engine)
    return cls().open(model, threads=threads, device=device, precision=precision, cache_dir=cache_dir,
                      spin_wait=spin_wait)
