"""ONNX int8 with onnxruntime.quantization: dynamic (weights only) and static QDQ (calibrated activations)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConfigError, ConversionError, EdgepilotError, InputError, last_line, translate
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext
from edgepilot.passes.calibration import batches, calibration_set, fixed_batch

log = logging.getLogger(__name__)
QType = Literal["int8", "uint8"]
_REDUCE_RANGE = ("quantise weights to 7 bits: avoids the int16 saturation of the u8×s8 kernels on x86 "
                 "CPUs without VNNI (AVX2 only), at a small cost in resolution")


class DynamicOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight_type: QType = Field("int8", description="weight type; activations are quantised at run time")
    per_channel: bool = Field(False, description="one scale per output channel instead of per tensor")
    reduce_range: bool = Field(False, description=_REDUCE_RANGE)
    op_types_to_quantize: list[str] | None = Field(None, description="e.g. [MatMul, Gemm]; None: every supported op")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names to keep in float")


class StaticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="how activation ranges are chosen from the calibration data")
    percentile: float = Field(99.999, gt=50, le=100, description="for calibrate_method=percentile")
    histogram_bins: int = Field(
        512, ge=128, le=8192, description="entropy: histogram bins searched for the KL-optimal threshold. "
                                          "onnxruntime's own 128 leave a single candidate (= MinMax); "
                                          "TensorRT uses 2048; the search time grows with the square")
    per_channel: bool = Field(False, description="one weight scale per output channel instead of per tensor")
    reduce_range: bool = Field(False, description=_REDUCE_RANGE)
    activation_type: QType = "int8"
    activation_symmetric: bool = Field(False, description="zero-point-free activations, as TensorRT's explicit "
                                                          "quantization requires")
    weight_type: QType = "int8"
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names to keep in float "
                                                                          "(the most error-sensitive ones)")
    op_types_to_quantize: list[str] | None = Field(None, description="None: every op type ORT can quantise")
    calibration_samples: int = Field(200, ge=1, description="at most this many calibration samples are used")
    batch_size: int = Field(16, ge=1, description="calibration batch (1 when the model fixes its batch)")
    preprocess: bool = Field(True, description="run quant_pre_process first (shape inference, graph "
                                               "optimisation): better ranges and per-channel axes")


class _OnnxQuantize(Pass):
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    requires = ("onnx", "onnxruntime")
    extra = "onnx"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if model.format == Format.ONNX and _is_quantized(model):
            reasons.append(f"{model.path.name} is already quantised (it has QuantizeLinear or integer ops)")
        return reasons


class OnnxQuantizeDynamic(_OnnxQuantize):
    name = "onnx-quantize-dynamic"
    Options = DynamicOptions

    def run(self, model: Model, options: DynamicOptions, ctx: PassContext) -> Model:
        q = require("onnxruntime.quantization", "onnx")
        out = ctx.workdir / "model_int8_dynamic.onnx"
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
            source = _keeping_nodes(model.path, _preprocess(model.path, Path(tmp), ctx), options.nodes_to_exclude,
                                    ctx)
            _call("quantize_dynamic", model, lambda: q.quantize_dynamic(
                source, out, weight_type=_qtype(q, options.weight_type), per_channel=options.per_channel,
                reduce_range=options.reduce_range, op_types_to_quantize=options.op_types_to_quantize,
                nodes_to_exclude=options.nodes_to_exclude or None))
        return Model.load(out)


class OnnxQuantizeStatic(_OnnxQuantize):
    name = "onnx-quantize-static"
    Options = StaticOptions

    def run(self, model: Model, options: StaticOptions, ctx: PassContext) -> Model:
        q = require("onnxruntime.quantization", "onnx")
        data = calibration_set(model, ctx, options.calibration_samples)
        batch = fixed_batch(model)
        if batch is not None and len(next(iter(data.values()))) < batch:
            raise InputError(f"the model takes batches of {batch}, but there are only "
                              f"{len(next(iter(data.values())))} calibration samples")
        n = len(next(iter(data.values())))
        size = batch or min(options.batch_size, n)
        # Equal batches only: a fixed batch cannot take a smaller last one, and the entropy and percentile
        # calibrators stack every batch's activations into one array, which a ragged last batch breaks.
        feeds = [f for f in batches(data, size) if len(next(iter(f.values()))) == size]
        ctx.notes["calibration_samples_used"] = size * len(feeds)
        method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                  "percentile": q.CalibrationMethod.Percentile}[options.calibrate_method]
        extra: dict = {"CalibPercentile": options.percentile} if options.calibrate_method == "percentile" else {}
        if options.activation_symmetric:
            extra["ActivationSymmetric"] = True
        out = ctx.workdir / f"model_int8_static_{options.calibrate_method}.onnx"
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
            source = _preprocess(model.path, Path(tmp), ctx) if options.preprocess else model.path
            source = _keeping_nodes(model.path, source, options.nodes_to_exclude, ctx)
            reader = _Reader(q, feeds)
            cache = None
            if options.calibrate_method == "entropy":
                cache = _entropy_ranges(q, model, source, reader, options, Path(tmp))
                ctx.notes["histogram_bins"] = options.histogram_bins if cache else "onnxruntime's default (128)"
            kwargs = {"calibration_cache_path": cache} if cache else {}
            _call("quantize_static", model, lambda: q.quantize_static(
                source, out, reader, quant_format=q.QuantFormat.QDQ, **kwargs,
                op_types_to_quantize=options.op_types_to_quantize, per_channel=options.per_channel,
                reduce_range=options.reduce_range, activation_type=_qtype(q, options.activation_type),
                weight_type=_qtype(q, options.weight_type), nodes_to_exclude=options.nodes_to_exclude or None,
                calibrate_method=method, extra_options=extra or None))
        ctx.notes["calibrate_method"] = options.calibrate_method
        return Model.load(out)


def _Reader(q, feeds: list[dict[str, np.ndarray]]):
    """A CalibrationDataReader over prepared feeds (defined lazily: its base class lives in onnxruntime)."""

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    return Reader()


def _entropy_ranges(q, model: Model, source: Path, reader, options: StaticOptions, tmp: Path) -> Path | None:
    """Entropy ranges from a calibrator with `histogram_bins` bins, saved as a cache for quantize_static.

    quantize_static builds its entropy calibrator with 128 bins and no way to change that; it does
    accept precomputed ranges. None where this onnxruntime predates calibration caches.
    """
    import inspect

    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        log.info("onnxruntime %s takes no calibration cache: entropy uses its 128 bins", _ort_version())
        return None
    calibrate = require("onnxruntime.quantization.calibrate", "onnx")
    cache = tmp / "entropy_ranges.json"

    def compute() -> None:
        calibrator = calibrate.create_calibrator(
            Path(source), options.op_types_to_quantize, augmented_model_path=str(tmp / "augmented.onnx"),
            calibrate_method=q.CalibrationMethod.Entropy,
            extra_options={"num_bins": options.histogram_bins, "num_quantized_bins": 128})
        calibrator.collect_data(reader)
        calibrate.save_tensors_data(calibrator.compute_data(), cache)

    _call("entropy calibration", model, compute)
    reader.rewind()
    return cache


def _ort_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime")


def _qtype(q, name: str):
    return q.QuantType.QInt8 if name == "int8" else q.QuantType.QUInt8


def _preprocess(path: Path, tmp: Path, ctx: PassContext) -> Path:
    """quant_pre_process: symbolic shape inference + ORT graph optimisation, or the model as it is on failure.

    Failing here is no reason to fail the quantisation: some graphs defeat the symbolic shape
    inference, and quantising the unprocessed model still works, with coarser choices.
    """
    shape_inference = require("onnxruntime.quantization.shape_inference", "onnx")
    out = tmp / "preprocessed.onnx"
    for skip_symbolic in (False, True):
        before = set(os.listdir("."))
        try:
            shape_inference.quant_pre_process(str(path), str(out), skip_symbolic_shape=skip_symbolic)
        except Exception as e:  # noqa: BLE001 - recorded, then try without it / quantise the original
            _remove_strays(before)
            reason = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            ctx.notes["preprocess"] = f"skipped: {reason[-1][:200] if reason else type(e).__name__}"
            continue
        ctx.notes["preprocess"] = "quant_pre_process" + (" (without symbolic shapes)" if skip_symbolic else "")
        return out
    log.info("quant_pre_process failed on %s; quantising it unprocessed", path.name)
    return path


def _remove_strays(before: set[str]) -> None:
    """onnxruntime's symbolic shape inference saves its half-inferred model (and external data) into the working
    directory when it gives up: remove what it left there."""
    for name in set(os.listdir(".")) - before:
        if name == "sym_shape_infer_temp.onnx" or name.endswith(".data"):
            Path(name).unlink(missing_ok=True)


def _keeping_nodes(original: Path, processed: Path, names: list[str], ctx: PassContext) -> Path:
    """The model to quantise: `processed` unless its graph optimisation fused or renamed a node to exclude.

    nodes_to_exclude names nodes of the given model; quant_pre_process may fuse them away (MatMul + Add
    into Gemm, Conv + BatchNormalization), and then the unprocessed model is quantised instead.
    """
    if not names:
        return processed
    have = _node_names(original)
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ConfigError(f"nodes_to_exclude names node {unknown[0]!r}, which is not in the model",
                          hint="node names: " + ", ".join(sorted(have))[:300])
    if processed != original and not set(names) <= _node_names(processed):
        ctx.notes["preprocess"] = "skipped: its graph optimisation merges nodes that nodes_to_exclude names"
        return original
    return processed


def _node_names(path: Path) -> set[str]:
    onnx = require("onnx", "onnx")
    return {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}


def _call(tool: str, model: Model, fn) -> None:
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):  # the calibrators print progress: keep it off the CLI's output
            fn()
    except EdgepilotError:
        raise
    except Exception as e:
        raise translate(e, ConversionError, f"onnxruntime {tool} failed on {model.path.name}", line=last_line,
                        limit=300, hint="keep the nodes it fails on in float with the nodes_to_exclude option") from e
    finally:
        if chatter.getvalue().strip():
            log.debug("%s said: %s", tool, chatter.getvalue().strip())


_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
              "QLinearConv", "QLinearMatMul"}


def _is_quantized(model: Model) -> bool:
    onnx = require("onnx", "onnx")
    try:
        graph = onnx.load(str(model.path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - an unreadable file is for run() to report
        return False
    return any(n.op_type in _QUANT_OPS for n in graph.node)
