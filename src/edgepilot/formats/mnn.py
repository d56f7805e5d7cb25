"""Read an MNN model (.mnn flatbuffer): IO specs, output shapes, parameter count and weight storage.

MNN's own flatbuffer verifier rejects truncated files, but a file that is structurally valid and
semantically corrupt (a tensor index past the end, a weight vector of the wrong length) makes its
loader crash the process. So the graph is walked and checked here, in Python, before MNN sees it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from edgepilot.errors import ModelError
from edgepilot.formats.tflite import _Corrupt, _Table  # the bounds-checked flatbuffer reader
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require

log = logging.getLogger(__name__)

# MNN schema (schema/default/*.fbs): DataType, MNN_DATA_FORMAT, OpType and OpParameter union tags.
DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 9: "int64",
          10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16"}
_FLOAT_TYPES = {1, 2, 14, 19}
LAYOUTS = {0: "NCHW", 1: "NHWC", 2: "NC4HW4", 3: "NHWC4"}
LAYOUTS_ALL = {0, 1, 2, 3, 4}  # with UNKNOWN
_MAX_RANK = 8
_OP_INPUT, _OP_CONST = 34, 11
_MAX_OP_TYPE = 1024  # the schema's largest is in the 600s; anything far past it is corruption
_P_BLOB, _P_CONV2D, _P_INNER_PRODUCT, _P_INPUT, _P_SCALE, _P_TENSOR_CONVERT = 7, 9, 20, 21, 58, 66
_SIZE = (0, 1 << 16)  # a plausible pad, kernel or stride
_AXIS = (-_MAX_RANK, _MAX_RANK)
# Parameters MNN indexes or allocates with unchecked: (scalar fields, vector fields, bounds) per kind.
_BOUNDED = {4: ((0,), (), _AXIS),  # Axis (Concat ...): axis
            17: ((0, 1), (), _AXIS),  # Flatten: axis, endAxis
            31: ((0, 1, 3, 4, 5, 6), (11,), _SIZE)}  # Pool: pads, kernels, strides; pads[]
# Operator types whose parameters MNN casts without checking: these must carry exactly this kind ...
_PARAM_OF = {_OP_CONST: _P_BLOB, 12: _P_CONV2D, 13: _P_CONV2D, 17: _P_CONV2D, 18: _P_CONV2D,
             _OP_INPUT: _P_INPUT}
# ... these, when they carry any (BinaryOp, Concat, Flatten, InnerProduct, Pooling, Reshape,
# Pooling3D, Unsqueeze, ConvertTensor) ...
_PARAM_IF_ANY = {7: 6, 10: 4, 28: 17, 33: 20, 47: 31, 73: 55, 112: 79, 107: 64, 129: 66}
# ... and these kinds belong to these operator types only (Blob: Const, TrainableParam).
_OWNERS = {_P_BLOB: {_OP_CONST, 266}, _P_INPUT: {_OP_INPUT}}
_IDST_STORAGE = {1: "int8", 2: "int8-sparse", 3: "float16", 4: "int8"}  # IDSTQuan.type
_MAX_DATA_TYPE = 21
_VAR_DTYPES = {"float": "float32", "double": "float64", "int": "int32", "int64": "int64", "int8": "int8",
               "uint8": "uint8"}  # MNN.expr dtype names
EXPECTED = "an MNN model: a flatbuffer written by MNNConvert (.mnn)"


@dataclass
class MNNInput:
    name: str
    dtype: str
    dims: list[int]  # the default shape stored in the file; MNN resizes at run time
    layout: str  # the layout the caller feeds: NCHW or NHWC


@dataclass
class MNNGraph:
    inputs: list[MNNInput]
    outputs: list[str]
    params: int
    weight_storage: set[str] = field(default_factory=set)
    biz_code: str = ""
    version: str = ""


def read(buf: bytes) -> MNNGraph:
    """Walk and validate the Net table; raises _Corrupt with what is wrong."""
    if len(buf) < 16:
        raise _Corrupt(f"only {len(buf)} bytes")
    root = struct.unpack_from("<I", buf, 0)[0]
    if not 4 <= root < len(buf) - 4:
        raise _Corrupt("the root offset points outside the file")
    # Net: 0 bizCode, 1 extraTensorDescribe, 2 extraInfo, 3 oplists, 4 outputName, 7 tensorName, 8 tensorNumber
    net = _Table(buf, root)
    names = [_str_at(buf, t) for t in _string_offsets(net, 7)]
    n_tensors = max(len(names), net.scalar(8, "i"))
    ops = net.tables(3)
    if not ops or n_tensors <= 0:
        raise _Corrupt("the graph has no operators or no tensors")
    producer: dict[int, int] = {}  # tensor -> the operator that writes it
    consumed: set[int] = set()
    inputs: list[MNNInput] = []
    params, storage, op_types = 0, set(), []
    for k, op in enumerate(ops):
        # Op: 0 inputIndexes, 1 main_type, 2 main, 3 name, 4 outputIndexes, 5 type, 6 defaultDimentionFormat
        ins, outs, op_type = op.vector(0, "i"), op.vector(4, "i"), op.scalar(5, "i")
        main_type, main = op.scalar(1, "B"), op.table(2)
        what = f"operator {k} ({_text(op, 3)!r})"
        _check_op(what, op, op_type, main_type, main, ins, outs, n_tensors)
        for t in outs:
            if t in producer:
                raise _Corrupt(f"{what} writes tensor {t}, which operator {producer[t]} writes too")
            producer[t] = k
        op_types.append(op_type)
        consumed.update(ins)
        if op_type == _OP_INPUT:
            inputs.append(_input(main, names[outs[0]] if outs[0] < len(names) else _text(op, 3)))
        elif main_type == _P_CONV2D:
            n, kind = _conv_params(main, what)
            params += n
            storage.add(kind)
        elif main_type == _P_INNER_PRODUCT:  # 3 weight, 4 bias
            params += main.vector_len(3) + main.vector_len(4)
        elif main_type == _P_SCALE:  # 1 scaleData, 2 biasData
            params += main.vector_len(1) + main.vector_len(2)
        elif main_type == _P_BLOB:
            params += _blob_params(main, what)
    orphans = sorted(consumed - producer.keys())
    if orphans:
        raise _Corrupt(f"tensor {orphans[0]} is read but no operator writes it")
    if not inputs:
        raise _Corrupt("the graph has no Input operator")
    out_names = [_str_at(buf, t) for t in _string_offsets(net, 4)]
    if not out_names:  # MNN's own rule: tensors produced and never consumed
        out_names = [names[t] for t, k in producer.items()
                     if t not in consumed and t < len(names) and op_types[k] not in (_OP_INPUT, _OP_CONST)]
    if not out_names:
        raise _Corrupt("the graph has no output tensor")
    unknown = [n for n in out_names if n not in names]
    if unknown:
        raise _Corrupt(f"the output {unknown[0]!r} is not a tensor of the graph")
    extra = net.table(2)
    return MNNGraph(inputs, out_names, params, storage, _text(net, 0),
                    _text(extra, 2) if extra is not None else "")


def _check_op(what: str, op: _Table, op_type: int, main_type: int, main: _Table | None,
              ins: list[int], outs: list[int], n_tensors: int) -> None:
    """The checks whose failure would otherwise crash MNN's loader (found by fuzzing real files)."""
    if not 0 <= op_type < _MAX_OP_TYPE:
        raise _Corrupt(f"{what} has an unknown type {op_type}")
    if not outs:
        raise _Corrupt(f"{what} writes no tensor")
    bad = [i for i in ins + outs if not 0 <= i < n_tensors]
    if bad:
        raise _Corrupt(f"{what} refers to tensor {bad[0]}, but the graph has {n_tensors}")
    if main_type and main is None:
        raise _Corrupt(f"{what} lost its parameters")
    want = _PARAM_OF.get(op_type, _PARAM_IF_ANY.get(op_type) if main_type else None)
    if (want is not None and main_type != want) or op_type not in _OWNERS.get(main_type, {op_type}):
        raise _Corrupt(f"{what} (type {op_type}) carries parameters of the wrong kind ({main_type})")
    if op_type == _OP_INPUT and len(outs) != 1:
        raise _Corrupt(f"{what} is an input with {len(outs)} outputs")
    if op.scalar(6, "b", 1) not in LAYOUTS_ALL:
        raise _Corrupt(f"{what} has an unknown data layout")
    if main_type in _BOUNDED:
        _check_bounds(what, main, *_BOUNDED[main_type])
    if main_type == _P_TENSOR_CONVERT and not {main.scalar(0, "b"), main.scalar(1, "b")} <= LAYOUTS_ALL:
        raise _Corrupt(f"{what} converts between unknown layouts")


def _check_bounds(what: str, t: _Table, scalars: tuple[int, ...], vectors: tuple[int, ...],
                  bounds: tuple[int, int]) -> None:
    values = [t.scalar(i, "i") for i in scalars] + [v for i in vectors for v in t.vector(i, "i")]
    if any(not bounds[0] <= v <= bounds[1] for v in values):
        raise _Corrupt(f"{what} has a parameter out of range ({values})")


def _input(main: _Table, name: str) -> MNNInput:
    # Input: 0 dims, 1 dtype, 2 dformat (NC4HW4 by default: the caller still feeds NCHW)
    dims = main.vector(0, "i")
    if len(dims) > _MAX_RANK or any(d < -1 or d > 1 << 24 for d in dims):
        raise _Corrupt(f"input {name!r} has an impossible shape {dims}")
    code = main.scalar(1, "i", 1)
    if code not in DTYPES:
        raise _Corrupt(f"input {name!r} has an unknown data type {code}")
    layout = "NHWC" if LAYOUTS.get(main.scalar(2, "b", 2)) in ("NHWC", "NHWC4") else "NCHW"
    return MNNInput(name, DTYPES[code], dims, layout)


def _conv_params(main: _Table, what: str) -> tuple[int, str]:
    # Convolution2D: 0 common, 1 weight, 2 bias, 3 quanParameter (IDSTQuan), 4 symmetricQuan
    common = main.table(0)
    if common is None:
        raise _Corrupt(f"{what} has no common parameters")
    # Convolution2DCommon: 0 padX, 1 padY, 2 kernelX, 3 kernelY, 4-5 stride, 6-7 dilate, 9 group,
    # 10 outputCount, 11 inputCount, 14 pads, 15 outPads
    _check_bounds(what, common, (0, 1, 2, 3, 4, 5, 6, 7), (14, 15), _SIZE)
    kx, ky, group = common.scalar(2, "i", 1), common.scalar(3, "i", 1), common.scalar(9, "i", 1)
    n_out, n_in = common.scalar(10, "i"), common.scalar(11, "i")
    if min(kx, ky, group) < 1 or n_out < 0 or n_in < 0:
        raise _Corrupt(f"{what} has impossible dimensions")
    n_weight, n_bias = main.vector_len(1), main.vector_len(2)
    expected = n_out * (n_in // group) * kx * ky
    if n_weight and n_in and n_weight != expected:
        raise _Corrupt(f"{what} holds {n_weight} weights where its shape needs {expected}")
    if n_bias and n_out and n_bias != n_out:
        raise _Corrupt(f"{what} holds {n_bias} biases for {n_out} outputs")
    if n_weight:
        return n_weight + n_bias, "float32"
    quan = main.table(3)
    kind = _IDST_STORAGE.get(quan.scalar(2, "i"), "quantized") if quan is not None else "external"
    if main.table(4) is not None:
        kind = "int8"
    return expected + (n_bias or n_out), kind


def _blob_params(blob: _Table, what: str) -> int:
    # Blob: 0 dims, 2 dataType, 3 uint8s, 4 int8s, 5 int32s, 6 int64s, 7 float32s, 9 external
    dims, code = blob.vector(0, "i"), blob.scalar(2, "i", 1)
    if len(dims) > _MAX_RANK or any(d < 0 for d in dims):
        raise _Corrupt(f"{what} has an impossible shape {dims}")
    if not 0 <= code <= _MAX_DATA_TYPE:
        raise _Corrupt(f"{what} has an unknown data type {code}")
    count = int(np.prod(dims, dtype=np.int64))
    field_of = {1: 7, 3: 5, 4: 3, 6: 4, 9: 6}  # the vector MNN reads `count` values from
    if code in field_of and not blob.vector_len(9) and blob.vector_len(field_of[code]) < count:
        raise _Corrupt(f"{what} holds {blob.vector_len(field_of[code])} values for shape {dims}")
    return count if code in _FLOAT_TYPES else 0


def _string_offsets(t: _Table, i: int) -> list[int]:
    at = t._indirect(i)  # a vector of strings: the reader has no helper for it
    if at is None:
        return []
    n = t._u32(at)
    if at + 4 + 4 * n > len(t.buf):
        raise _Corrupt("a string vector runs past the end of the file")
    return [at + 4 + 4 * k + t._u32(at + 4 + 4 * k) for k in range(n)]


def _text(t: _Table, i: int) -> str:
    at = t._indirect(i)
    return "" if at is None else _str_at(t.buf, at)


def _str_at(buf: bytes, at: int) -> str:
    if at + 4 > len(buf):
        raise _Corrupt("a string starts past the end of the file")
    n = struct.unpack_from("<I", buf, at)[0]
    if at + 4 + n > len(buf):
        raise _Corrupt("a string runs past the end of the file")
    try:  # MNN's Python binding crashes on a name that is not UTF-8
        return buf[at + 4:at + 4 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Corrupt(f"a tensor name is not UTF-8 text (byte {at + 4 + e.start})") from None


def describe(path: Path, fmt: Format = Format.MNN) -> Model:
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read it ({e.strerror})") from e
    try:
        g = read(buf)
    except (_Corrupt, IndexError, struct.error, ValueError) as e:
        raise ModelError(f"{path}: not a valid MNN model ({e})",
                         hint=f"expected {EXPECTED}; the file may be truncated or corrupt: convert it again") from e
    out_specs = _output_specs(path, g)
    inputs = [TensorSpec(i.name, i.dtype, _dynamic_batch(i.dims)) for i in g.inputs]
    files = [path] + [p for p in (path.with_name(path.name + ".weight"),) if p.exists()]
    return Model(
        path=path, format=Format.MNN, inputs=inputs, outputs=out_specs, params=g.params, files=files,
        meta={"biz_code": g.biz_code, "mnn_version": g.version,
              "default_input_shapes": {i.name: i.dims for i in g.inputs},
              "input_layouts": {i.name: i.layout for i in g.inputs},
              "weight_storage": sorted(g.weight_storage) or ["float32"],
              "params_counted": "convolution, inner-product and scale weights and float constants"},
    )


def _dynamic_batch(dims: list[int]) -> tuple:
    """MNN keeps only a default shape; its runtime resizes inputs, so the leading dim is the batch."""
    shape: list = [None if d < 0 else d for d in dims]
    if len(shape) >= 2:
        shape[0] = "batch"
    return tuple(shape)


def _output_specs(path: Path, g: MNNGraph) -> list[TensorSpec]:
    """Output dtypes and shapes from MNN's shape inference at the default input shapes."""
    mnn = import_mnn()
    try:
        variables = mnn.expr.load_as_dict(str(path))
    except Exception as e:
        raise ModelError(f"{path}: MNN cannot read it ({e})", hint=f"expected {EXPECTED}") from e
    specs = []
    batch = {i.dims[0] for i in g.inputs if len(i.dims) >= 2}
    for name in g.outputs:
        var = variables.get(name)
        if var is None:
            raise ModelError(f"{path}: output {name!r} is missing from the graph MNN loaded")
        try:
            dims, dtype = list(var.shape), _VAR_DTYPES.get(str(var.dtype).split(".")[-1], "float32")
        except Exception as e:  # noqa: BLE001 - shape inference fails on some control-flow graphs
            log.debug("no static shape for MNN output %s: %s", name, e)
            dims, dtype = None, "float32"
        shape = tuple(dims) if dims is not None else None
        if shape and len(batch) == 1 and shape[0] in batch:
            shape = ("batch", *shape[1:])
        specs.append(TensorSpec(name, dtype, shape))
    return specs



def import_mnn() -> ModuleType:
    """`import MNN`, without the CPU-feature line its native library prints to stdout as it loads.

    stdout may carry JSON (`edgepilot inspect --json`), so that line must not land in it.
    """
    if "MNN" in sys.modules:
        return require("MNN", "mnn")
    with _stdout_silenced():
        return require("MNN", "mnn")


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        try:  # C stdio buffers when stdout is a pipe: flush into /dev/null before restoring
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
