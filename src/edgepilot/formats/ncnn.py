"""Read an ncnn model (.param text + .bin weights) in pure Python: IO specs, parameter count, storage.

Shapes: ncnn blobs carry no batch dimension; the engine runs a batch one sample at a time. So a
blob of ncnn shape (c, h, w) is described as ("batch", c, h, w), (h, w) as ("batch", h, w) and
(w,) as ("batch", w): the layout of the ONNX/PyTorch model it was converted from. An input's shape
comes from its Input layer (0=w 1=h 11=d 2=c) or a shape hint (-23330=...); an output's from a
shape hint only, so it is usually None (unknown) - ncnn infers it when it runs.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from edgepilot.errors import ModelError
from edgepilot.model import Format, Model, TensorSpec

MAGIC = "7767517"
EXPECTED = "an ncnn model: a .param text file starting with the line 7767517 and a .bin file beside it"
_ARRAY_KEY = -23300  # a key k <= -23300 holds an array for param id -(k + 23300): "n,v1,...,vn"
_SHAPE_HINTS = 30
# Layers whose weights size the .param states: (weight_data_size key, bias_term key), num_output = 0.
_WEIGHTED = {t: (6, 5) for t in (
    "Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "Convolution1D",
    "ConvolutionDepthWise1D", "Deconvolution1D", "DeconvolutionDepthWise1D", "Convolution3D",
    "ConvolutionDepthWise3D", "Deconvolution3D", "DeconvolutionDepthWise3D")}
_WEIGHTED["InnerProduct"] = (2, 1)
# ModelBin's tag before auto-typed weights (ncnn/src/modelbin.cpp): (storage, bytes per weight)
_TAGS = {0x01306B47: ("float16", 2), 0x000D4B38: ("int8", 1), 0x0002C056: ("float32", 4), 0: ("float32", 4)}
_NO_WEIGHTS = {
    "Input", "ReLU", "ReLU6", "Clip", "Sigmoid", "TanH", "Swish", "HardSwish", "HardSigmoid", "Mish", "GELU",
    "ELU", "SELU", "Pooling", "Pooling1D", "Pooling3D", "Split", "Concat", "Slice", "Flatten", "Reshape",
    "Permute", "Softmax", "Eltwise", "BinaryOp", "UnaryOp", "Crop", "Interp", "Padding", "Dropout", "Noop",
    "Squeeze", "ExpandDims", "Reduction", "ShuffleChannel", "PixelShuffle", "Reorg", "Cast", "Tile",
    "MatMul", "Einsum", "Threshold", "Exp", "Log", "Power", "AbsVal", "Bnll", "CopyTo",
    "Deconvolution_dummy", "Dequantize_dummy"}


class _Malformed(Exception):
    pass


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, int | float | list[int | float]] = field(default_factory=dict)


def parse_param(text: str) -> list[Layer]:
    """The layers of a .param file, checked the way ncnn's loader reads them."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != MAGIC:
        raise _Malformed(f"the first line is not the magic number {MAGIC}")
    try:
        n_layers, n_blobs = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise _Malformed("the second line is not '<layer count> <blob count>'") from None
    if n_layers <= 0 or n_blobs <= 0:
        raise _Malformed(f"it declares {n_layers} layers and {n_blobs} blobs")
    if len(lines) - 2 < n_layers:
        raise _Malformed(f"it declares {n_layers} layers but holds {len(lines) - 2} (truncated?)")
    layers, produced, consumed = [], set(), set()
    for no, line in enumerate(lines[2:2 + n_layers], start=3):
        layer = _layer(line, no)
        missing = [b for b in layer.bottoms if b not in produced]
        if missing:
            raise _Malformed(f"line {no}: layer {layer.name!r} reads blob {missing[0]!r}, which no layer "
                             "before it writes")
        produced.update(layer.tops)
        consumed.update(layer.bottoms)
        layers.append(layer)
    if len(produced) > n_blobs:
        raise _Malformed(f"it declares {n_blobs} blobs but its layers write {len(produced)}")
    if not any(la.type == "Input" for la in layers):
        raise _Malformed("it has no Input layer")
    return layers


def _layer(line: str, no: int) -> Layer:
    tok = line.split()
    try:
        n_in, n_out = int(tok[2]), int(tok[3])
    except (IndexError, ValueError):
        raise _Malformed(f"line {no}: not '<type> <name> <inputs> <outputs> ...'") from None
    if n_in < 0 or n_out < 0 or len(tok) < 4 + n_in + n_out:
        raise _Malformed(f"line {no}: layer {tok[1]!r} lists fewer blobs than it declares")
    layer = Layer(tok[0], tok[1], tok[4:4 + n_in], tok[4 + n_in:4 + n_in + n_out])
    for kv in tok[4 + n_in + n_out:]:
        key, sep, value = kv.partition("=")
        try:
            k = int(key)
            if not sep:
                raise ValueError
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                layer.params[k] = value[1:-1]  # a string parameter, e.g. pnnx's shape expressions for Reshape
            elif k <= _ARRAY_KEY:
                n, *values = value.split(",")
                if int(n) != len(values):
                    raise ValueError
                layer.params[_ARRAY_KEY - k] = [_number(v) for v in values]
            else:
                layer.params[k] = _number(value)
        except ValueError:
            raise _Malformed(f"line {no}: layer {layer.name!r} has a malformed parameter {kv!r}") from None
    return layer


def _number(v: str) -> int | float:
    return float(v) if re.search(r"[.eE]", v) else int(v)


def ncnn_shape(layer: Layer, top: int = 0) -> tuple[int, ...] | None:
    """A blob's ncnn shape (c, [d,] h, w) from a shape hint, or from an Input layer's w/h/d/c."""
    hints = layer.params.get(_SHAPE_HINTS)
    if isinstance(hints, list) and len(hints) >= 4 * (top + 1):
        dims, w, h, c = (int(v) for v in hints[4 * top:4 * top + 4])
        shape = {1: (w,), 2: (h, w), 3: (c, h, w)}.get(dims)
        if shape and all(d > 0 for d in shape):
            return shape
    if layer.type != "Input":
        return None
    w, h, d, c = (int(layer.params.get(k, 0)) for k in (0, 1, 11, 2))
    if c > 0:
        return (c, d, h, w) if d > 0 else (c, h, w)
    return (h, w) if h > 0 else (w,) if w > 0 else None


def _weights(layers: list[Layer], weights: bytes) -> tuple[int, set[str], int]:
    """(params, weight storage, .bin bytes they take) for the layers whose weight count the .param states.

    The .bin is walked, reading each layer's storage tag, while every weighted layer so far is one of
    those; past the first other one, offsets are unknown and fp32 is assumed.
    """
    params, storage, offset, walking = 0, set(), 0, True
    for layer in layers:
        if layer.type in _NO_WEIGHTS:
            continue
        if layer.type not in _WEIGHTED:
            walking = False
            continue
        wkey, bkey = _WEIGHTED[layer.type]
        n_weight, n_out = int(layer.params.get(wkey, 0)), int(layer.params.get(0, 0))
        n_bias = n_out if int(layer.params.get(bkey, 0)) else 0
        if n_weight < 0 or n_out < 0:
            raise _Malformed(f"layer {layer.name!r} declares a negative size")
        params += n_weight + n_bias
        size, table = 4, 0
        if walking:
            if offset + 4 > len(weights):
                raise _Malformed(f"the weights of layer {layer.name!r} start past the end of the .bin")
            tag = struct.unpack_from("<I", weights, offset)[0]
            kind, size = _TAGS.get(tag, ("int8-table", 1))
            table = 256 * 4 if kind == "int8-table" else 0  # 8-bit indices into a 256-entry float table
            storage.add(kind)
        offset += 4 + table + (n_weight * size + 3) // 4 * 4 + 4 * n_bias
        if walking and offset > len(weights):
            raise _Malformed(f"the .bin ends inside the weights of layer {layer.name!r} "
                             f"({len(weights)} bytes; at least {offset} needed)")
    return params, storage, offset


def describe(path: Path, fmt: Format = Format.NCNN) -> Model:
    weights_path = path.with_suffix(".bin")
    try:
        text = path.read_text(encoding="utf-8")
        layers = parse_param(text)
    except (UnicodeDecodeError, _Malformed) as e:
        raise ModelError(f"{path}: not a valid ncnn .param file ({e})", hint=f"expected {EXPECTED}") from e
    except OSError as e:
        raise ModelError(f"{path}: cannot read it ({e.strerror})") from e
    if not weights_path.is_file():
        raise ModelError(f"{path}: the weights file {weights_path.name} is missing beside it",
                         hint="an ncnn model is a .param file and a .bin file with the same stem")
    try:
        counted, storage, accounted = _weights(layers, weights_path.read_bytes())
    except _Malformed as e:
        raise ModelError(f"{weights_path}: does not fit {path.name} ({e})",
                         hint="the .bin may be truncated, or belong to another .param") from e
    rest = weights_path.stat().st_size - accounted
    params = counted + max(rest, 0) // 4  # other layers' weights: fp32 is a guess
    consumed = {b for la in layers for b in la.bottoms}
    inputs = [TensorSpec(la.tops[0], "float32", _batched(ncnn_shape(la))) for la in layers
              if la.type == "Input" and la.tops]
    outputs = [TensorSpec(top, "float32", _batched(ncnn_shape(la, j))) for la in layers
               for j, top in enumerate(la.tops) if top not in consumed and la.type != "Input"]
    if not outputs:
        raise ModelError(f"{path}: the graph has no output blob (every blob is read by a layer)")
    return Model(
        path=path, format=Format.NCNN, inputs=inputs, outputs=outputs, params=params,
        files=[path, weights_path],
        meta={"layers": len(layers), "layer_types": sorted({la.type for la in layers}),
              "weight_storage": sorted(storage) or ["unknown"],
              "params_method": "exact for convolution and inner-product layers; other layers' weights "
                               "estimated as .bin bytes / 4" if rest > 0 else "exact",
              "layout": "ncnn blobs are per sample: shapes are the model's with a leading batch"},
    )


def _batched(shape: tuple[int, ...] | None) -> tuple | None:
    return None if shape is None else ("batch", *shape)


def set_input_shapes(param: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write per-sample shapes (c, h, w) / (h, w) / (w,) into the Input layers of a .param file.

    pnnx writes Input layers without a shape; ncnn ignores it when running, but it is the only
    place a .param can say what it takes.
    """
    lines = param.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        tok = line.split()
        if len(tok) >= 5 and tok[0] == "Input" and tok[4] in shapes:
            dims = list(shapes[tok[4]])[::-1]  # ncnn's order: w, h, c
            keys = (0, 1, 2) if len(dims) <= 3 else (0, 1, 11, 2)
            kept = [t for t in tok[5:] if t.partition("=")[0] not in {str(k) for k in (0, 1, 2, 11)}]
            lines[i] = " ".join(tok[:5] + [f"{k}={v}" for k, v in zip(keys, dims)] + kept)
    param.write_text("\n".join(lines) + "\n", encoding="utf-8")
