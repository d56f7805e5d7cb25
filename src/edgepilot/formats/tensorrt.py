"""Read a serialized TensorRT engine plan (.engine/.plan): IO specs and optimisation profiles.

A plan is an opaque blob tied to the TensorRT version and GPU that built it: only TensorRT can
read it, and only where it can deserialize it (a CUDA GPU with a matching TensorRT).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from edgepilot.errors import ModelError, UnavailableError, first_line
from edgepilot.model import Format, Model, TensorSpec

HINT = "inspect or run it on the machine with the NVIDIA GPU: pip install 'edgepilot[tensorrt]' there"


def load_trt() -> Any:
    """The tensorrt module, or UnavailableError saying that a plan needs TensorRT to be read."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise UnavailableError("TensorRT engine plans can only be inspected where TensorRT is installed",
                               hint=HINT) from e
    except Exception as e:  # the wheel exists but its libraries (libnvinfer, CUDA) do not load
        raise UnavailableError(f"TensorRT failed to import: {first_line(e)}", hint=HINT) from e


def deserialize(trt: Any, runtime: Any, path: Path) -> Any:
    """An ICudaEngine from the plan file, with errors that say why it might not load."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read it ({e.strerror})") from e
    hint = ("a plan runs only with the TensorRT version and GPU architecture that built it (and only "
            "with a CUDA GPU present); rebuild it from the ONNX model here")
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as e:  # pybind raises where the C++ API would return null
        why = first_line(e) if str(e) else type(e).__name__
        raise ModelError(f"{path}: TensorRT {trt.__version__} cannot deserialize this plan ({why})",
                         hint=hint) from e
    if engine is None:
        raise ModelError(f"{path}: TensorRT {trt.__version__} cannot deserialize this plan", hint=hint)
    return engine


def np_dtype(trt: Any, dtype: Any) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # BF16, FP8, INT4 ... have no numpy type
        return str(dtype).rsplit(".", 1)[-1].lower()


def io_specs(trt: Any, engine: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs in the engine's IO order; dynamic dims (-1) become None."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
        spec = TensorSpec(name, np_dtype(trt, engine.get_tensor_dtype(name)), shape)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


def profiles(trt: Any, engine: Any, inputs: list[TensorSpec]) -> list[dict[str, Any]]:
    """Per optimisation profile, the (min, opt, max) shape of each dynamic input."""
    out = []
    for p in range(engine.num_optimization_profiles):
        shapes = {}
        for spec in inputs:
            if spec.is_static:
                continue
            lo, opt, hi = engine.get_tensor_profile_shape(spec.name, p)
            shapes[spec.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        out.append(shapes)
    return out


def describe(path: Path, fmt: Format = Format.TENSORRT) -> Model:
    from edgepilot.engines.tensorrt import gpu_count

    trt = load_trt()
    n, why = gpu_count()
    if n == 0:  # deserializing a plan needs a CUDA device; say so rather than "corrupt file"
        raise UnavailableError(f"{path}: TensorRT plans can only be inspected on a machine with a CUDA GPU "
                               f"({why})", hint=HINT)
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = deserialize(trt, runtime, path)
    inputs, outputs = io_specs(trt, engine)
    memory = getattr(engine, "device_memory_size_v2", None) or getattr(engine, "device_memory_size", None)
    meta = {
        "tensorrt": trt.__version__,
        "layers": engine.num_layers,
        "profiles": profiles(trt, engine, inputs),
        "device_memory_bytes": int(memory) if memory is not None else None,
    }
    return Model(path=path, format=Format.TENSORRT, inputs=inputs, outputs=outputs, files=[path], meta=meta)
