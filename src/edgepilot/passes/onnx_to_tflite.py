"""ONNX → TFLite with onnx2tf (the converter Ultralytics uses): float32, float16, dynamic-range int8 and full int8.

It is how ONNX and PyTorch sources (through torch-to-onnx) reach LiteRT and, through the int8 result, TFLite
Micro. onnx2tf runs in a child process with the pass's work dir as its working directory: it writes files
there, and it would download a sample-image file for 3-channel image inputs unless one is present, so the
pass writes that file from the calibration data first. Image inputs come out NHWC, as TFLite kernels want.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, InputError
from edgepilot.model import Format, Model
from edgepilot.passes.base import Pass, PassContext
from edgepilot.passes.calibration import calibration_set

# onnx2tf's metadata pins old numpy/onnx/protobuf: pip cannot resolve it beside the rest, so it is no extra
INSTALL_HINT = ("pip install --no-deps onnx2tf==1.29.24 tf_keras==2.21.0 onnx_graphsurgeon sng4onnx "
                "(`make setup` does)")
_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # the file onnx2tf downloads when absent
# onnx2tf's file name suffix per precision; full int8 with int8 I/O, as keras-to-tflite makes it
_SUFFIX = {"float32": "float32", "float16": "float16", "dynamic": "dynamic_range_quant", "int8": "full_integer_quant"}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["float32", "float16", "dynamic", "int8"] = "float32"
    io_dtype: Literal["int8", "uint8", "float32"] = Field("int8", description="I/O type of a full-int8 model")
    quant_type: Literal["per-channel", "per-tensor"] = Field("per-channel", description="int8 weight scales per")
    calibration_samples: int = Field(100, ge=1, description="representative samples for int8")
    timeout_s: int = Field(1800, ge=10, description="how long onnx2tf may take")


class OnnxToTFLite(Pass):
    name = "onnx-to-tflite"
    consumes = frozenset({Format.ONNX})
    produces = Format.TFLITE
    Options = Options
    requires = ("tensorflow", "tf_keras", "onnx_graphsurgeon", "onnx")
    extra = "tf"

    @classmethod
    def missing(cls) -> list[str]:
        onnx2tf = [] if importlib.util.find_spec("onnx2tf") else [f"'onnx2tf' is not installed ({INSTALL_HINT})"]
        return super().missing() + onnx2tf

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        shapes = _shapes(model, ctx)
        # With calibration data one onnx2tf run writes every precision: the plan's other variants reuse it
        calibrated = options.precision == "int8" or bool(ctx.calibration)
        calibration = calibration_set(model, ctx, options.calibration_samples) if calibrated else None
        if options.precision != "int8":
            ctx.notes.pop("calibration_samples", None)  # calibrated int8 was made alongside, not this variant
        key = _key(model, shapes, options, calibration)
        work = ctx.cache_dir / "onnx2tf" / key if ctx.cache_dir else ctx.workdir / "onnx2tf"
        found = sorted(work.glob(f"*_{_SUFFIX[options.precision]}.tflite")) if ctx.cache_dir else []
        if not found:
            shutil.rmtree(work, ignore_errors=True)
            try:
                found = self._convert(model, options, ctx, shapes, calibration, work)
            except ConversionError as e:
                if calibration is None or options.precision not in ("float32", "float16"):
                    raise
                # the int8 step failed: a float variant does not need it
                ctx.notes["int8_failed"] = e.message
                work = work.with_name(work.name + "-float")
                shutil.rmtree(work, ignore_errors=True)
                found = self._convert(model, options, ctx, shapes, None, work)
        else:
            ctx.notes["reused"] = "the onnx2tf run of an earlier variant of this plan"
        out = ctx.workdir / f"model_{options.precision}.tflite"
        shutil.copyfile(found[0], out)
        if not ctx.cache_dir:
            shutil.rmtree(work, ignore_errors=True)  # the SavedModel and the other precisions: not this variant's
        ctx.notes["converter"] = "onnx2tf"
        return Model.load(out)

    def _convert(self, model: Model, options: Options, ctx: PassContext, shapes, calibration, work) -> list:
        static = _static_copy(model, shapes, ctx.workdir / "static.onnx")
        args = [sys.executable, "-m", "onnx2tf", "-i", str(static.resolve()), "-o", str(work), "-v", "error",
                "-n"]  # -n: no onnxsim (not installed); _static_copy folded the shape arithmetic with onnxslim
        _write_sample(model, ctx)
        nhwc = [s.name for s in model.inputs if _is_nhwc(shapes.get(s.name) or s.shape)]
        if nhwc:  # onnx2tf takes every 4-D input for NCHW; an NHWC one (a tf2onnx export) keeps its layout
            args += ["-kat", *nhwc]
        if calibration is not None or options.precision == "dynamic":  # dynamic comes with the int8 step
            args += ["-oiqt", "-qt", options.quant_type]
        if calibration is not None:
            args += ["-iqd", options.io_dtype, "-oqd", options.io_dtype, *_calibration_args(model, ctx, calibration)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        try:
            proc = subprocess.run(args, cwd=ctx.workdir, capture_output=True, text=True, timeout=options.timeout_s,
                                  env=env)
        except subprocess.TimeoutExpired as e:
            raise ConversionError(f"onnx2tf took longer than {options.timeout_s} s on {model.path.name}",
                                  hint="raise the pass's timeout_s option") from e
        finally:
            for f in [*ctx.workdir.glob("*.npy"), static]:
                f.unlink(missing_ok=True)
        found = sorted(work.glob(f"*_{_SUFFIX[options.precision]}.tflite"))
        if proc.returncode != 0 or not found:
            text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr + proc.stdout)  # onnx2tf colours its errors
            tail = [ln for ln in text.strip().splitlines() if ln.strip()][-3:]
            raise ConversionError(f"onnx2tf failed on {model.path.name} (exit {proc.returncode}): "
                                  f"{' | '.join(t.strip()[:200] for t in tail) or 'no message'}",
                                  hint="onnx2tf may lack an op of this model; a Keras model converts to TFLite "
                                       "without it (keras-to-tflite)")
        return found


def _is_nhwc(shape) -> bool:
    """A 4-D image input whose channels come last (1, 3 or 4 of them, after larger spatial sizes)."""
    if not shape or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        return False
    return shape[3] in (1, 3, 4) and shape[1] > 4 and shape[2] > 4


def _calibration_args(model: Model, ctx: PassContext, data: dict[str, np.ndarray]) -> list[str]:
    args = ["-cind"]
    for spec in model.inputs:
        x = data[spec.name].astype(np.float32)
        if x.ndim == 4 and not _is_nhwc(x.shape):  # onnx2tf feeds its NHWC model: NCHW data is transposed
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        path = ctx.workdir / f"calibration_{len(args)}.npy"
        np.save(path, x)
        args += [spec.name, str(path), "[0.0]", "[1.0]"]  # the data is fed as given: mean 0, std 1
    return args


def _key(model: Model, shapes, options: Options, calibration: dict[str, np.ndarray] | None) -> str:
    """What an onnx2tf run depends on: the model, its input sizes, the int8 settings and the calibration data."""
    h = hashlib.sha256(model.path.read_bytes())
    h.update(repr((sorted(shapes.items()), options.quant_type, options.io_dtype)).encode())
    for name in sorted(calibration or {}):
        h.update(name.encode() + np.ascontiguousarray(calibration[name]).tobytes())
    return h.hexdigest()[:16]


def _shapes(model: Model, ctx: PassContext) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes, batch 1: TFLite and TFLite Micro want static tensors, onnx2tf needs them to calibrate."""
    out = {}
    for spec in model.inputs:
        given = (ctx.input_shapes or {}).get(spec.name)
        if given is not None:
            out[spec.name] = (1, *tuple(given)[1:])
        elif spec.shape and all(isinstance(d, int) and d > 0 for d in spec.shape[1:]):
            out[spec.name] = (1, *spec.shape[1:])
        else:
            raise InputError(f"input {spec.name!r} {spec.shape_str()} has dynamic sizes",
                             hint="give --shape, or data, so that the conversion has concrete sizes")
    return out


def _static_copy(model: Model, shapes: dict[str, tuple[int, ...]], path):
    """The ONNX model with these input sizes, shapes inferred again and shape arithmetic folded (onnx2tf trips
    over dynamic sizes, and over the -1 batch some exporters write)."""
    import onnx

    m = onnx.load(str(model.path))
    for inp in m.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    _rewrite_hard_sigmoid(m)
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    if importlib.util.find_spec("onnxslim") is not None:
        import onnxslim

        m = onnxslim.slim(m)
    for k, node in enumerate(m.graph.node):  # TensorFlow takes node names as scope names: [A-Za-z0-9_.\\/>-]
        node.name = re.sub(r"[^A-Za-z0-9_./>-]", "_", node.name or node.op_type) + f"_{k}"
    onnx.save(m, str(path))
    return path


def _rewrite_hard_sigmoid(m) -> int:
    """HardSigmoid(x) = clip(6αx + 6β, 0, 6) / 6: the same function in ops onnx2tf writes as MUL, ADD, RELU6
    (TFLite Micro has no kernel for the RELU_0_TO_1 that HardSigmoid becomes)."""
    from onnx import helper, numpy_helper

    nodes, count = [], 0
    for node in m.graph.node:
        if node.op_type != "HardSigmoid":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        k = f"hsig{count}_{node.output[0]}"
        consts = {f"{k}_scale": 6 * alpha, f"{k}_shift": 6 * beta, f"{k}_lo": 0.0, f"{k}_hi": 6.0,
                  f"{k}_sixth": 1 / 6}
        for name, v in consts.items():
            m.graph.initializer.append(numpy_helper.from_array(np.array(v, np.float32), name))
        nodes += [helper.make_node("Mul", [node.input[0], f"{k}_scale"], [f"{k}_a"]),
                  helper.make_node("Add", [f"{k}_a", f"{k}_shift"], [f"{k}_b"]),
                  helper.make_node("Clip", [f"{k}_b", f"{k}_lo", f"{k}_hi"], [f"{k}_c"]),
                  helper.make_node("Mul", [f"{k}_c", f"{k}_sixth"], [node.output[0]])]
        count += 1
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return count


def _write_sample(model: Model, ctx: PassContext) -> None:
    """onnx2tf's sample-image file, from the calibration data (resized to 128×128) where there is any."""
    x = None
    if ctx.calibration:
        x = np.asarray(next(iter(ctx.calibration.values())), np.float32)
        if x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3:
            x = x.transpose(0, 2, 3, 1)
        if x.ndim != 4 or x.shape[-1] != 3:
            x = None
    if x is None:
        sample = np.zeros((20, 128, 128, 3), np.float32)
    else:
        rows = np.linspace(0, x.shape[1] - 1, 128).round().astype(int)
        cols = np.linspace(0, x.shape[2] - 1, 128).round().astype(int)
        picked = x[np.arange(20) % len(x)]
        sample = np.ascontiguousarray(picked[:, rows][:, :, cols], np.float32)
    np.save(ctx.workdir / _SAMPLE, sample)
