"""The Engine/Session contract every runtime implements, and the feed checks they share."""
from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgepilot.errors import ConfigError, InputError
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require  # noqa: F401 - engines import it from here


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float values to the integer dtype of `spec` with its scale and zero point."""
    q = spec.quantization
    info = np.iinfo(spec.np_dtype)
    scale, zp = _broadcast(q, x.ndim)
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(spec.np_dtype)


def dequantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    scale, zp = _broadcast(spec.quantization, x.ndim)
    return ((x.astype(np.float32) - zp) * scale).astype(np.float32)


def _broadcast(q, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(q.scale, dtype=np.float32)
    zp = np.asarray(q.zero_point, dtype=np.float32)
    if scale.size > 1:  # per-channel: line the values up with the quantised axis
        shape = [1] * ndim
        shape[q.axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def check_feeds(inputs: list[TensorSpec], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate names, dtypes and shapes; quantise float feeds for quantised integer inputs."""
    names = {t.name for t in inputs}
    unknown = [k for k in feeds if k not in names]
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r}", hint=f"the model takes {sorted(names)}")
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name not in feeds:
            raise InputError(f"missing input {spec.name!r}", hint=f"the model takes {sorted(names)}")
        x = feeds[spec.name]
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype != spec.np_dtype:
            if spec.quantization is not None and x.dtype.kind == "f":
                x = quantize(x, spec)
            else:
                raise InputError(
                    f"input {spec.name!r} expects {spec.dtype}, got {x.dtype}",
                    hint=f"cast it: x.astype(np.{spec.dtype})")
        if spec.shape is not None:
            _check_shape(spec, x.shape)
        out[spec.name] = x
    return out


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if len(shape) != len(spec.shape):
        raise InputError(f"input {spec.name!r} expects rank {len(spec.shape)} {spec.shape_str()}, "
                         f"got shape {list(shape)}")
    for i, (want, got) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want >= 0 and want != got:
            what = "batch size" if i == 0 else f"dimension {i}"
            raise InputError(f"input {spec.name!r} expects {what} {want} {spec.shape_str()}, "
                             f"got shape {list(shape)}",
                             hint="this model has a fixed batch; export it with a dynamic one" if i == 0
                             else None)


Precision = Literal["fp32", "fp16", "bf16"]
AS_STORED = "as stored"  # the engine computes in the precision the model's own operators hold


class EngineOptions(BaseModel):
    """What every engine takes; an engine with more settings subclasses this as its `Options`."""

    model_config = ConfigDict(extra="forbid")
    threads: int | None = Field(None, ge=1, description="None: every core this process may use, on every engine")
    device: str | None = Field(None, description="None: the engine's first device")
    precision: Precision | None = Field(
        None, description="the arithmetic for engines that choose it (OpenVINO, ncnn, MNN); None: fp32, so a "
                          "float model is computed as exported whatever the CPU's default (bf16, fp16) would be")
    cache_dir: str | None = Field(None, description="compiled-model cache, for engines that keep one")
    spin_wait: bool | None = Field(None, description="None: the engine's default; False: idle threads sleep "
                                                     "rather than spin (onnxruntime), for cores shared with other "
                                                     "stages")


def default_threads() -> int:
    """What threads=None means on every engine: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Session(ABC):
    """A loaded model ready to run. `run` validates feeds, then calls the runtime.

    `threads` and `precision` say what the runtime really uses (None where a setting does not apply),
    so that every measurement can record them.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    threads: int | None = None
    precision: str = AS_STORED

    def run(self, feeds: Mapping[str, np.ndarray], *, dequantize_outputs: bool = True) -> dict[str, np.ndarray]:
        result = self._run(check_feeds(self.inputs, feeds))
        if dequantize_outputs:
            for spec in self.outputs:
                if spec.quantization is not None and spec.name in result:
                    result[spec.name] = dequantize(result[spec.name], spec)
        return result

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated feeds; return outputs by name, as the runtime gives them."""

    def close(self) -> None:  # noqa: B027 - most runtimes free on garbage collection
        pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Engine(ABC):
    """One inference runtime. Subclasses import their runtime lazily, inside methods."""

    name: ClassVar[str]
    formats: ClassVar[frozenset[Format]]
    package: ClassVar[str]  # the importable module that must exist
    extra: ClassVar[str]  # the edgepilot extra that installs it
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    caches_compiled: ClassVar[bool] = False  # honours EngineOptions.cache_dir
    Options: ClassVar[type[EngineOptions]] = EngineOptions

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether this runtime can run here, and why not; never raises."""
        try:
            if importlib.util.find_spec(cls.package) is None:
                return False, f"'{cls.package}' is not installed (pip install 'edgepilot[{cls.extra}]')"
            return cls._check()
        except Exception as e:  # a broken install must not break `doctor`
            return False, f"{cls.package} failed to import: {e}"

    @classmethod
    def _check(cls) -> tuple[bool, str]:
        """Deeper checks once the package exists (a GPU, a driver ...)."""
        mod = importlib.import_module(cls.package)
        return True, f"{cls.package} {getattr(mod, '__version__', '')}".strip()

    @classmethod
    def version(cls) -> str | None:
        try:
            from importlib.metadata import version

            return version(cls.extra_dist())
        except Exception:
            return None

    @classmethod
    def extra_dist(cls) -> str:
        return cls.package

    def options(self, options: EngineOptions | None = None, **values: Any) -> EngineOptions:
        """Typed options from an options object and/or keywords (keywords win); a bad value is a ConfigError."""
        merged = {**(options.model_dump(exclude_unset=True) if options else {}), **values}
        try:
            opts = self.Options(**merged)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "options"
            raise ConfigError(f"engine {self.name}: {where}: {err['msg']}",
                              hint=f"it takes {', '.join(self.Options.model_fields)}") from None
        if opts.device is None:
            opts.device = self.devices[0]
        return opts

    def open(self, model: Model, options: EngineOptions | None = None, **values: Any) -> Session:
        """Load `model` and return a ready Session, e.g. `open(model, threads=2, precision="fp32")`."""
        return self._open(model, self.options(options, **values))

    @abstractmethod
    def _open(self, model: Model, opts: EngineOptions) -> Session:
        """Load `model` with validated options (device filled in)."""
