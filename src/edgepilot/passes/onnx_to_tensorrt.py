"""ONNX → TensorRT engine plan (fp32 / fp16 / int8) with TensorRT's builder, where TensorRT and a CUDA GPU exist.

int8 comes two ways: a QDQ model (onnx-quantize-static with symmetric activations) is built as
TensorRT's explicit quantization, in a strongly typed network; a float model is calibrated by an
entropy or min-max calibrator fed from the calibration data (TensorRT 10; 11 removed calibrators).
A plan runs only on the GPU architecture and TensorRT version that built it.
"""
from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgepilot.errors import ConversionError, InputError, ModelError, UnavailableError
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext
from edgepilot.passes.calibration import calibration_set

log = logging.getLogger(__name__)
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    tf32: bool = Field(False, description="let fp32 layers use TF32 tensor cores (faster, ~10-bit mantissa)")
    min_batch: int = Field(1, ge=1, description="optimisation profile for a dynamic batch: smallest")
    opt_batch: int = Field(1, ge=1, description="the batch size TensorRT tunes kernels for")
    max_batch: int = Field(8, ge=1, description="largest batch the plan accepts")
    workspace_mb: int = Field(1024, ge=16, description="builder scratch memory limit")
    calibrator: Literal["entropy", "minmax"] = Field(
        "entropy", description="int8 from a float model: IInt8EntropyCalibrator2 or IInt8MinMaxCalibrator")
    calibration_samples: int = Field(500, ge=1)
    calibration_batch: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Options:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("need min_batch <= opt_batch <= max_batch")
        return self


class OnnxToTensorRT(Pass):
    name = "onnx-to-tensorrt"
    consumes = frozenset({Format.ONNX})
    produces = Format.TENSORRT
    Options = Options
    extra = "tensorrt"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if importlib.util.find_spec("tensorrt") is None:
            reasons.append("TensorRT is not installed (pip install 'edgepilot[tensorrt]' on a machine "
                           "with an NVIDIA GPU)")
        from edgepilot.engines.tensorrt import gpu_count

        n, why = gpu_count()
        if n == 0:
            reasons.append(why or "no CUDA GPU found")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        calibration = None
        if options.precision == "int8" and not has_qdq(model.path):
            calibration = calibration_set(model, ctx, options.calibration_samples)
        out = ctx.workdir / f"model_{options.precision}.engine"
        build_plan(model.path, out, options, calibration=calibration, workdir=ctx.workdir)
        ctx.notes["explicit_quantization"] = options.precision == "int8" and calibration is None
        return Model.load(out)


def has_qdq(path: Path) -> bool:
    onnx = require("onnx", "onnx")
    return any(n.op_type in _QDQ for n in onnx.load(str(path), load_external_data=False).graph.node)


def build_plan(onnx_path: Path, plan_path: Path, options: Options | None = None, *,
               calibration: dict[str, np.ndarray] | None = None, workdir: Path | None = None) -> Path:
    """Parse the ONNX model, configure the builder for `options` and write the serialized plan."""
    trt = require("tensorrt", "tensorrt")
    options = options or Options(precision="fp32")
    logger = _logger(trt)
    builder = trt.Builder(logger)
    qdq = has_qdq(onnx_path)
    has_fp16_flag = hasattr(trt.BuilderFlag, "FP16")
    # Strong typing: the ONNX types decide each layer's precision. Required for QDQ models and for
    # fp16 on TensorRT 11, which dropped the FP16 builder flag.
    strongly_typed = qdq or (options.precision == "fp16" and not has_fp16_flag)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        source = onnx_path
        if options.precision == "fp16" and not has_fp16_flag and not qdq:
            source = _fp16_copy(onnx_path, Path(tmp))
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)  # explicit batch is TensorRT 10's only mode
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"TensorRT cannot parse {onnx_path.name}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if not options.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly_typed:
        if options.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif options.precision == "int8":
            _calibrate(trt, builder, network, config, options, calibration)
    profile = _profile(builder, network, options.min_batch, options.opt_batch, options.max_batch)
    if profile is not None:
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ConversionError(f"TensorRT failed to build a plan from {onnx_path.name}",
                              hint=logger.errors[-1][:300] if logger.errors else None)
    plan_path.write_bytes(plan)
    return plan_path


def _input_dims(network: Any) -> list[tuple[str, tuple[int, ...]]]:
    dims = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = tuple(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise InputError(f"input {t.name!r} has dynamic dimensions beyond the batch {list(shape)}",
                             hint="export the ONNX model with fixed sizes except the batch")
        dims.append((t.name, shape))
    return dims


def _profile(builder: Any, network: Any, lo: int, opt: int, hi: int) -> Any:
    """One optimisation profile over the batch; None when every input is static."""
    dims = _input_dims(network)
    if all(shape[0] >= 0 for _, shape in dims):
        return None
    profile = builder.create_optimization_profile()
    for name, shape in dims:
        rest = shape[1:]
        if shape[0] >= 0:
            profile.set_shape(name, shape, shape, shape)
        else:
            profile.set_shape(name, (lo, *rest), (opt, *rest), (hi, *rest))
    return profile


def _calibrate(trt: Any, builder: Any, network: Any, config: Any, options: Options,
               calibration: dict[str, np.ndarray] | None) -> None:
    if not hasattr(config, "int8_calibrator"):
        raise UnavailableError(f"TensorRT {trt.__version__} has no int8 calibrators (removed in 11)",
                               hint="quantise first with onnx-quantize-static (activation_symmetric: true) "
                                    "and build the plan from its QDQ model")
    if calibration is None:
        raise InputError("calibration data missing", hint="int8 from a float model needs representative samples")
    n = len(next(iter(calibration.values())))
    batch = min(options.calibration_batch, n)
    dims = _input_dims(network)
    if any(shape[0] >= 0 and shape[0] != batch for _, shape in dims):
        batch = next(shape[0] for _, shape in dims if shape[0] >= 0)  # a fixed batch decides
        if n < batch:
            raise InputError(f"the model takes batches of {batch}, but there are only {n} calibration samples")
    config.set_flag(trt.BuilderFlag.INT8)
    # Calibration runs at one shape: a profile pinned to the calibration batch.
    profile = builder.create_optimization_profile()
    for name, shape in dims:
        profile.set_shape(name, *[(batch, *shape[1:])] * 3)
    config.set_calibration_profile(profile)
    base = trt.IInt8EntropyCalibrator2 if options.calibrator == "entropy" else trt.IInt8MinMaxCalibrator
    config.int8_calibrator = _calibrator(base, calibration, batch)


def _calibrator(base: Any, data: dict[str, np.ndarray], batch: int) -> Any:
    from edgepilot.engines.tensorrt import _cuda, cudart

    rt = cudart()

    class Calibrator(base):
        """Feeds the calibration set to TensorRT batch by batch through device buffers it owns."""

        def __init__(self) -> None:
            base.__init__(self)
            n = len(next(iter(data.values())))
            self._starts = iter(range(0, n - batch + 1, batch))  # whole batches only: the shape is fixed
            self._buffers = {name: int(_cuda(rt, rt.cudaMalloc(x[:batch].nbytes), "allocating"))
                             for name, x in data.items()}
            self._cache: bytes | None = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            start = next(self._starts, None)
            if start is None:
                self._free()
                return None
            h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            for name in names:
                x = np.ascontiguousarray(data[name][start:start + batch])
                _cuda(rt, rt.cudaMemcpy(self._buffers[name], x.ctypes.data, x.nbytes, h2d), "copying")
            return [self._buffers[name] for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return self._cache  # never a stale file: the data may have changed

        def write_calibration_cache(self, cache: Any) -> None:
            self._cache = bytes(cache)

        def _free(self) -> None:
            for ptr in self._buffers.values():
                rt.cudaFree(ptr)
            self._buffers = {}

    return Calibrator()


def _fp16_copy(onnx_path: Path, tmp: Path) -> Path:
    from edgepilot.passes.onnx_fp16 import OnnxFp16

    ctx = PassContext(tmp)
    p = OnnxFp16()
    return p.run(Model.load(onnx_path), p.options(), ctx).path


def _logger(trt: Any) -> Any:
    class Logger(trt.ILogger):
        """TensorRT's messages into our log; errors kept to explain a failed build."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.warning("TensorRT: %s", msg)
            elif level <= int(trt.ILogger.Severity.WARNING):
                log.info("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()
