"""Weight quantisation error by bit depth and per tensor (the article's §3.1), from ONNX or Keras weights.

Each float weight tensor is quantised with symmetric uniform quantisation (narrow range:
levels -(2^(b-1)-1) … 2^(b-1)-1, as TFLite and ONNX Runtime store int8 weights), per tensor and
per output channel, then dequantised and compared with the original: MSE, max abs error and
SQNR in dB. 32 bits is the float32 original (no error); the compression ratio is 32/bits.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from edgepilot.errors import ModelError
from edgepilot.model import Format, Model
from edgepilot.optional import require

BITS = (32, 16, 8, 4)
SCHEMES = ("per-tensor", "per-channel")


@dataclass
class Weight:
    name: str
    values: np.ndarray  # float32
    axis: int  # the output-channel axis, for per-channel scales


@dataclass
class TensorError:
    name: str
    shape: tuple[int, ...]
    bits: int
    scheme: str
    mse: float
    max_abs: float
    sqnr_db: float | None  # None: no error at all (the float32 original)


@dataclass
class QuantErrorReport:
    tensors: list[TensorError] = field(default_factory=list)
    overall: list[dict] = field(default_factory=list)  # one row per (bits, scheme), over every weight

    def to_dict(self) -> dict:
        return {"overall": self.overall, "tensors": [asdict(t) | {"shape": list(t.shape)} for t in self.tensors]}

    def worst(self, bits: int = 8, scheme: str = "per-tensor", n: int = 5) -> list[TensorError]:
        """The `n` tensors with the lowest SQNR at this bit depth: the first candidates to keep in float."""
        rows = [t for t in self.tensors if t.bits == bits and t.scheme == scheme and t.sqnr_db is not None]
        return sorted(rows, key=lambda t: t.sqnr_db)[:n]


def fake_quantize(w: np.ndarray, bits: int, per_channel: bool = False, axis: int = 0) -> np.ndarray:
    """`w` quantised to `bits` symmetric uniform levels and back to float (32 bits: unchanged)."""
    w = np.asarray(w, dtype=np.float32)
    if bits >= 32:
        return w.copy()
    if bits < 2:
        raise ValueError("symmetric quantisation needs at least 2 bits")
    qmax = 2 ** (bits - 1) - 1
    if per_channel and w.ndim > 1:
        reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        peak = np.max(np.abs(w), axis=reduce, keepdims=True)
    else:
        peak = np.max(np.abs(w)) if w.size else np.float32(0)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float64)  # an all-zero channel stays zero
    q = np.clip(np.round(w / scale), -qmax, qmax)
    return (q * scale).astype(np.float32)


def quant_error(model: Model, bits: Iterable[int] = BITS, schemes: Iterable[str] = SCHEMES,
                min_size: int = 16) -> QuantErrorReport:
    """The error of quantising every weight tensor of `model` (of at least `min_size` values, ≥ 2-D)."""
    weights = [w for w in read_weights(model) if w.values.ndim >= 2 and w.values.size >= min_size]
    if not weights:
        raise ModelError(f"{model.path}: no float weight tensors to analyse")
    bits, schemes = list(bits), list(schemes)
    unknown = set(schemes) - set(SCHEMES)
    if unknown:
        raise ValueError(f"unknown scheme {sorted(unknown)[0]!r}; choose from {', '.join(SCHEMES)}")
    report = QuantErrorReport()
    for b in bits:
        for scheme in schemes:
            signal = noise = 0.0
            count, peak = 0, 0.0
            for w in weights:
                x = w.values.astype(np.float64)
                err = x - fake_quantize(w.values, b, scheme == "per-channel", w.axis)
                sq = float(np.sum(err * err))
                power = float(np.sum(x * x))
                max_abs = float(np.max(np.abs(err))) if err.size else 0.0
                report.tensors.append(TensorError(w.name, tuple(w.values.shape), b, scheme, sq / x.size,
                                                  max_abs, _sqnr(power, sq)))
                signal, noise, count, peak = signal + power, noise + sq, count + x.size, max(peak, max_abs)
            report.overall.append({"bits": b, "scheme": scheme, "mse": noise / count, "max_abs": peak,
                                   "sqnr_db": _sqnr(signal, noise), "compression": 32 / b if b < 32 else 1.0,
                                   "tensors": len(weights), "values": count})
    return report


def _sqnr(signal: float, noise: float) -> float | None:
    if noise == 0:
        return None
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def read_weights(model: Model) -> list[Weight]:
    """The float weight tensors of an ONNX or Keras model, each with its output-channel axis."""
    if model.format == Format.ONNX:
        return _onnx_weights(model)
    if model.format == Format.KERAS:
        return _keras_weights(model)
    raise ModelError(f"{model.path}: weight analysis reads ONNX or Keras models, not {model.format.value}",
                     hint="analyse the ONNX or Keras model this variant was built from")


def _onnx_weights(model: Model) -> list[Weight]:
    onnx = require("onnx", "onnx")
    numpy_helper = onnx.numpy_helper
    proto = onnx.load(str(model.path))
    # Output channels: axis 0 for Conv [O, I, kH, kW] and Gemm with transB; the last for MatMul [K, N].
    last_axis = set()
    for node in proto.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1:
            last_axis.add(node.input[1])
        elif node.op_type == "Gemm" and len(node.input) > 1:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            if not trans_b:
                last_axis.add(node.input[1])
    out = []
    for t in proto.graph.initializer:
        values = numpy_helper.to_array(t)
        if values.dtype.kind != "f":
            continue
        out.append(Weight(t.name, values.astype(np.float32), -1 if t.name in last_axis else 0))
    return out


def _keras_weights(model: Model) -> list[Weight]:
    keras = require("keras", "tf")
    m = keras.models.load_model(str(model.path), compile=False, safe_mode=True)
    out = []
    for v in m.weights:  # Keras kernels keep output channels last: Conv2D [kH, kW, I, O], Dense [I, O]
        values = np.asarray(v.numpy())
        if values.dtype.kind == "f":
            out.append(Weight(getattr(v, "path", v.name), values.astype(np.float32), -1))
    return out
