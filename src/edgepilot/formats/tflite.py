"""Read a TFLite flatbuffer without any runtime: IO specs with quantisation, ops, params and MACs.

The reader checks every offset against the file size first, so a truncated or corrupt file
becomes a clear error here instead of a crash inside a C++ interpreter.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepilot.errors import ModelError, first_line
from edgepilot.model import Format, Model, Quantization, TensorSpec
from edgepilot.optional import require

# TensorType enum of the TFLite schema, by value.
_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "object", 6: "bool",
           7: "int16", 8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64",
           15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16"}
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED = 3, 4, 9
_COUNTED = (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED)


class _Corrupt(Exception):
    pass


class _Table:
    """A flatbuffer table with bounds-checked field access (the flatbuffers package checks nothing)."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vt = pos - self._i32(pos)
        self.vt, self.vt_len = vt, self._u16(vt)

    def _read(self, fmt: str, at: int):
        if at < 0 or at + struct.calcsize(fmt) > len(self.buf):
            raise _Corrupt(f"offset {at} is past the end of the file")
        return struct.unpack_from(fmt, self.buf, at)[0]

    def _u16(self, at): return self._read("<H", at)
    def _i32(self, at): return self._read("<i", at)
    def _u32(self, at): return self._read("<I", at)

    def _field(self, i: int) -> int:
        off = 4 + 2 * i
        return self._u16(self.vt + off) if off < self.vt_len else 0

    def scalar(self, i: int, fmt: str, default=0):
        off = self._field(i)
        return self._read("<" + fmt, self.pos + off) if off else default

    def _indirect(self, i: int) -> int | None:
        off = self._field(i)
        return None if not off else self.pos + off + self._u32(self.pos + off)

    def table(self, i: int) -> _Table | None:
        at = self._indirect(i)
        return None if at is None else _Table(self.buf, at)

    def string(self, i: int) -> str:
        at = self._indirect(i)
        if at is None:
            return ""
        n = self._u32(at)
        if at + 4 + n > len(self.buf):
            raise _Corrupt("a string runs past the end of the file")
        return self.buf[at + 4:at + 4 + n].decode("utf-8", "replace")

    def vector(self, i: int, fmt: str) -> list:
        at = self._indirect(i)
        if at is None:
            return []
        n, size = self._u32(at), struct.calcsize(fmt)
        if at + 4 + n * size > len(self.buf):
            raise _Corrupt("a vector runs past the end of the file")
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, at + 4))

    def tables(self, i: int) -> list[_Table]:
        at = self._indirect(i)
        if at is None:
            return []
        n = self._u32(at)
        return [_Table(self.buf, at + 4 + 4 * k + self._u32(at + 4 + 4 * k)) for k in range(n)]

    def vector_len(self, i: int) -> int:
        at = self._indirect(i)
        return 0 if at is None else self._u32(at)


@dataclass
class TFLiteGraph:
    """What edgepilot needs from the flatbuffer; `ops` are builtin operator names (for op resolvers)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: list[str]
    params: int
    macs: int | None  # None: a counted op's size is dynamic and no shape was given
    description: str


def read(buf: bytes, sizes: dict[int, list[int]] | None = None) -> TFLiteGraph:
    """The graph; `sizes` (tensor index -> shape, from an interpreter resized to concrete inputs) override the
    stored shapes for the MAC count."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise _Corrupt("no 'TFL3' identifier")
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    # Model fields: 1 operator_codes, 2 subgraphs, 3 description, 4 buffers
    codes = [max(c.scalar(0, "b"), c.scalar(3, "i")) for c in model.tables(1)]
    subgraphs = model.tables(2)
    if not subgraphs:
        raise _Corrupt("the model has no subgraph")
    buffers = model.tables(4)
    g = subgraphs[0]
    tensors = g.tables(0)  # SubGraph: 0 tensors, 1 inputs, 2 outputs, 3 operators
    shapes = [t.vector(0, "i") for t in tensors]
    # shape_signature (field 7) says -1 where a size is dynamic; the stored shape then holds a placeholder 1
    dynamic = [sizes is None and any(d < 0 for d in t.vector(7, "i")[1:]) for t in tensors]
    if sizes is not None:
        shapes = [list(sizes.get(i, s)) for i, s in enumerate(shapes)]
    names = _op_names()
    ops, macs, params = [], 0, 0
    for op in g.tables(3):  # Operator: 0 opcode_index, 1 inputs, 2 outputs
        code = codes[op.scalar(0, "I")]
        ops.append(names.get(code, f"OP_{code}"))
        ins, outs = op.vector(1, "i"), op.vector(2, "i")
        counted = _op_macs(code, [shapes[i] if i >= 0 else [] for i in ins], [shapes[o] for o in outs])
        if code in _COUNTED and macs is not None and any(dynamic[t] for t in [*ins, *outs] if t >= 0):
            macs = None  # a dynamic height or width: unknown, never counted as 1
        elif macs is not None:
            macs += counted
    for t in tensors:  # Tensor: 2 buffer; Buffer: 0 data, 2 size (for models over 2 GB)
        b = t.scalar(2, "I")
        if 0 < b < len(buffers) and (buffers[b].vector_len(0) or buffers[b].scalar(2, "Q")):
            params += int(np.prod(t.vector(0, "i"), dtype=np.int64))
    return TFLiteGraph(
        inputs=[_spec(tensors[i]) for i in g.vector(1, "i")],
        outputs=[_spec(tensors[i]) for i in g.vector(2, "i")],
        ops=ops, params=params, macs=macs, description=model.string(3),
    )


def describe(path: Path, fmt: Format = Format.TFLITE) -> Model:
    g = _read_file(path)
    return Model(path=path, format=Format.TFLITE, inputs=g.inputs, outputs=g.outputs, params=g.params,
                 macs=g.macs, files=[path], meta={"ops": sorted(set(g.ops)), "description": g.description,
                                                  "macs_at": _stored_shapes(g)})


def macs_at(path: Path, shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[int | None, dict]:
    """MACs for one sample at these input shapes, and the shapes they hold at.

    A flatbuffer stores one size per tensor, so other input sizes are propagated by LiteRT's
    interpreter (resize and allocate: nothing runs).
    """
    if not shapes:
        g = _read_file(path)
        return g.macs, _stored_shapes(g)
    interp_mod = require("ai_edge_litert.interpreter", "tflite")
    try:
        # without the default XNNPACK delegate: tensors inside a delegated part keep their stored sizes
        it = interp_mod.Interpreter(model_path=str(path), experimental_op_resolver_type=(
            interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        for d in it.get_input_details():
            if d["name"] in shapes:
                it.resize_tensor_input(d["index"], list(shapes[d["name"]]))
        it.allocate_tensors()
        sizes = {d["index"]: [int(v) for v in d["shape"]] for d in it.get_tensor_details()}
    except Exception as e:  # LiteRT's errors are RuntimeError/ValueError with the reason
        raise ModelError(f"{path}: LiteRT cannot take the shapes {dict(shapes)} "
                         f"({first_line(e)})") from e
    g = read(path.read_bytes(), sizes)
    return g.macs, {s.name: list(shapes.get(s.name, s.shape)) for s in g.inputs}


def _read_file(path: Path) -> TFLiteGraph:
    try:
        return read(path.read_bytes())
    except (_Corrupt, IndexError, struct.error) as e:
        raise ModelError(f"{path}: not a valid TFLite model ({e})",
                         hint="the file may be truncated or corrupt; convert it again") from e


def _stored_shapes(g: TFLiteGraph) -> dict:
    """The input sizes a count without shapes holds at: the stored ones, a dynamic batch as 1."""
    return {s.name: [1 if i == 0 and d is None else d for i, d in enumerate(s.shape or ())] for s in g.inputs}


def _spec(t: _Table) -> TensorSpec:
    # Tensor: 0 shape, 1 type, 3 name, 4 quantization, 7 shape_signature (-1 = dynamic)
    sig = t.vector(7, "i") or t.vector(0, "i")
    shape = tuple(None if d < 0 else d for d in sig)
    quant = None
    q = t.table(4)  # QuantizationParameters: 2 scale, 3 zero_point, 6 quantized_dimension
    if q is not None:
        scale, zp = q.vector(2, "f"), q.vector(3, "q")
        if scale:
            quant = Quantization(tuple(scale), tuple(int(z) for z in zp) or (0,) * len(scale), q.scalar(6, "i"))
    return TensorSpec(t.string(3), _DTYPES.get(t.scalar(1, "b"), "float32"), shape, quant)


def _op_macs(code: int, ins: list[list[int]], outs: list[list[int]]) -> int:
    try:
        out = outs[0]
        if code == CONV_2D:  # weights OHWI
            return int(np.prod(out[1:])) * int(np.prod(ins[1][1:]))
        if code == DEPTHWISE_CONV_2D:  # weights 1HWC
            return int(np.prod(out[1:])) * int(ins[1][1] * ins[1][2])
        if code == FULLY_CONNECTED:  # weights [units, in]
            return int(ins[1][0]) * int(ins[1][1])
    except (IndexError, ValueError):
        pass
    return 0


def _op_names() -> dict[int, str]:
    """BuiltinOperator names from a generated schema if one is installed; codes otherwise."""
    for mod in ("ai_edge_litert.schema_py_generated", "tflite_micro.tensorflow.lite.micro.python.schema_py_generated"):
        try:
            import importlib

            ops = importlib.import_module(mod).BuiltinOperator
            return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}
        except ImportError:
            continue
    return {}
