"""TensorRT engine: runs serialized engine plans (.engine/.plan) on an NVIDIA GPU through cuda-python.

A plan is built for one GPU architecture and TensorRT version (see passes / tests/builders/tensorrt.py);
this engine only loads and runs it. Device memory and the stream come from cuda-python's runtime
bindings, so the device side needs neither PyTorch nor PyCUDA. `threads` does not apply.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
from typing import Any

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session
from edgepilot.errors import InputError, ModelError, RuntimeFailure, UnavailableError
from edgepilot.model import Format, Model
from edgepilot.optional import require

log = logging.getLogger(__name__)
_CUDA_HINT = "pip install 'edgepilot[tensorrt]' (tensorrt and cuda-python) on a machine with an NVIDIA GPU"


def cudart() -> Any:
    """cuda-python's CUDA runtime bindings: cuda.bindings.runtime (12.6+; the only layout in 13)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UnavailableError("the Python package 'cuda-python' is not installed", hint=_CUDA_HINT)


def _err_name(rt: Any, err: Any) -> str:
    _, name = rt.cudaGetErrorName(err)
    return name.decode() if isinstance(name, bytes) else str(name)


def _cuda(rt: Any, result: Any, what: str) -> Any:
    """cuda-python returns (error, *values): raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeFailure(f"CUDA {what} failed: {_err_name(rt, err)}")
    return values[0] if len(values) == 1 else values or None


def gpu_count() -> tuple[int, str]:
    """How many CUDA GPUs this process can use, and why none when it is 0. Never raises."""
    try:
        rt = cudart()
        err, n = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess:
            return 0, f"no CUDA GPU found (cudaGetDeviceCount: {_err_name(rt, err)})"
        return int(n), "" if n else "no CUDA GPU found"
    except UnavailableError:
        pass
    except Exception as e:  # noqa: BLE001 - a broken CUDA install means no usable GPU, not a crash
        return 0, f"no CUDA GPU found ({e})"
    # Without cuda-python the driver library still answers: it ships with the NVIDIA driver.
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA GPU found (no NVIDIA driver: libcuda.so.1 is missing)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0, "no CUDA GPU found (the NVIDIA driver found no usable device)"
    return count.value, "" if count.value else "no CUDA GPU found"


def _device_index(device: str) -> int:
    kind, _, index = device.lower().partition(":")
    if kind not in ("cuda", "gpu") or (index and not index.isdigit()):
        raise UnavailableError(f"TensorRT runs on a CUDA GPU only, not on {device!r}",
                               hint="use device='cuda' (or 'cuda:N' for the N-th GPU)")
    return int(index or 0)


def _handle(obj: Any) -> int:
    """A CUDA object's address as an int (int(obj) is deprecated from cuda-python 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle

        return int(get_cuda_native_handle(obj))
    except (ImportError, TypeError, AttributeError):
        return int(obj)


class TensorRTSession(Session):
    def __init__(self, model: Model, device_index: int):
        from edgepilot.formats.tensorrt import deserialize, io_specs

        trt = require("tensorrt", "tensorrt")
        self._rt = rt = cudart()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._stream = None
        self._device = device_index
        _cuda(rt, rt.cudaSetDevice(device_index), f"selecting GPU {device_index}")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = deserialize(trt, self._runtime, model.path)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeFailure(f"{model.path}: TensorRT could not create an execution context",
                                 hint="the GPU may be out of memory")
        ins, outs = io_specs(trt, self._engine)
        unsupported = [f"{s.name} ({s.dtype})" for s in ins + outs if not _numpy_dtype(s.dtype)]
        if unsupported:
            raise ModelError(f"{model.path}: IO tensors without a numpy type: {', '.join(unsupported)}",
                             hint="build the plan with float32/float16/int8/int32 inputs and outputs")
        # The describer read the same engine, so its names match; fall back to the engine's own view.
        self.inputs = model.inputs or ins
        self.outputs = model.outputs or outs
        self._in_names = [s.name for s in ins]
        self._out = [(s.name, np.dtype(s.dtype)) for s in outs]
        self._stream = _cuda(rt, rt.cudaStreamCreate(), "creating a stream")

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for `name`, reused across runs and grown when needed."""
        ptr, size = self._buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                _cuda(self._rt, self._rt.cudaFree(ptr), "freeing device memory")
                del self._buffers[name]
            ptr = int(_cuda(self._rt, self._rt.cudaMalloc(max(nbytes, 1)), f"allocating {nbytes} bytes"))
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt, ctx, stream = self._rt, self._context, self._stream
        # The runtime API's current device is per host thread: a session may run on another thread.
        _cuda(rt, rt.cudaSetDevice(self._device), f"selecting GPU {self._device}")
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []  # keep the host arrays alive until the stream is synchronised
        for name in self._in_names:
            x = np.ascontiguousarray(feeds[name])
            if not ctx.set_input_shape(name, x.shape):
                raise InputError(f"TensorRT rejects shape {list(x.shape)} for input {name!r}",
                                 hint="the plan's optimisation profile bounds each dynamic dimension; "
                                      "see `edgepilot inspect` (meta.profiles)")
            ptr = self._buffer(name, x.nbytes)
            _cuda(rt, rt.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, stream), "copying an input")
            ctx.set_tensor_address(name, ptr)
            hosts.append(x)
        results: dict[str, np.ndarray] = {}
        for name, dtype in self._out:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeFailure(f"output {name!r} has a data-dependent shape {list(shape)}",
                                     hint="edgepilot runs plans whose output shapes follow from the inputs")
            results[name] = np.empty(shape, dtype=dtype)
            ctx.set_tensor_address(name, self._buffer(name, results[name].nbytes))
        if not ctx.execute_async_v3(_handle(stream)):
            raise RuntimeFailure("TensorRT failed to enqueue the inference (see its log above)")
        for name, host in results.items():
            ptr = self._buffers[name][0]
            _cuda(rt, rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, stream), "copying an output")
        _cuda(rt, rt.cudaStreamSynchronize(stream), "running the inference")
        return results

    def close(self) -> None:
        rt = getattr(self, "_rt", None)
        if rt is None:
            return
        for ptr, _ in self._buffers.values():
            rt.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None
        # Context before engine before runtime: TensorRT objects must die in that order.
        for attr in ("_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
        self._rt = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may already be gone
            self.close()


def _numpy_dtype(name: str) -> bool:
    try:
        np.dtype(name)
        return True
    except TypeError:
        return False


class TensorRTEngine(Engine):
    name = "tensorrt"
    formats = frozenset({Format.TENSORRT})
    package = "tensorrt"
    extra = "tensorrt"
    devices = ("cuda",)

    @classmethod
    def _check(cls) -> tuple[bool, str]:
        trt = importlib.import_module("tensorrt")
        try:
            cudart()
        except UnavailableError:
            return False, f"tensorrt is installed but cuda-python is not ({_CUDA_HINT})"
        n, why = gpu_count()
        if n == 0:
            return False, f"{why}; TensorRT needs an NVIDIA GPU"
        return True, f"tensorrt {trt.__version__}, {n} CUDA GPU{'s' if n > 1 else ''}"

    def _open(self, model: Model, opts: EngineOptions) -> Session:
        # A plan's precision was fixed when it was built; threads do not apply on the GPU.
        index = _device_index(opts.device)
        ok, why = self.available()
        if not ok:
            raise UnavailableError(f"TensorRT is not available here: {why}", hint=_CUDA_HINT)
        return TensorRTSession(model, index)
