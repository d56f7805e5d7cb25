"""Read an ONNX model: IO specs, parameter count and a MAC estimate from shape inference."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgepilot.errors import ModelError, first_line
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require


def describe(path: Path, fmt: Format = Format.ONNX) -> Model:
    onnx = require("onnx", "onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:  # DecodeError, ValidationError ... all mean the same to the user
        first = first_line(e)
        raise ModelError(f"{path}: not a valid ONNX model ({first})",
                         hint="the file may be truncated or corrupt; export it again") from e
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [_spec(onnx, v) for v in graph.input if v.name not in initializers]
    outputs = [_spec(onnx, v) for v in graph.output]
    params = _count_params(graph)
    files = [path] + [path.parent / loc for loc in _external_files(graph)]
    macs, macs_shapes = _count_macs(onnx, proto)
    return Model(
        path=path, format=Format.ONNX, inputs=inputs, outputs=outputs, params=params,
        macs=macs, files=files,
        meta={"opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
              "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
              "ir_version": proto.ir_version, "macs_at": macs_shapes},
    )


def _spec(onnx, value) -> TensorSpec:
    t = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name if t.elem_type else "float32"
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def _count_params(graph) -> int:
    """Elements of the initializers and of Constant-node tensors (paddle2onnx exports keep weights there)."""
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" and not n.domain
                                         for a in n.attribute if a.name == "value"]
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in tensors))


def _external_files(graph) -> set[str]:
    return {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}


def macs_at(path: Path, shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[int | None, dict]:
    """MACs for one sample at the given input shapes (default: each dynamic leading dim 1, the rest as stored).

    Returns the count and the input shapes it holds at; the count is None where a counted op's size
    stays symbolic (a dynamic height or width with no shape given): never a guess.
    """
    onnx = require("onnx", "onnx")
    return _count_macs(onnx, onnx.load(str(path), load_external_data=False), shapes)


def _count_macs(onnx, proto, shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[int | None, dict]:
    """MACs of Conv, Gemm and MatMul for one sample, and the input shapes they were counted at."""
    proto = _at_shapes(onnx, proto, shapes or {})
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:
        return None, {}
    g = inferred.graph
    known = {}  # a symbolic or missing size is None: a product that meets it is unknown, not 1
    for v in list(g.input) + list(g.value_info) + list(g.output):
        known[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    for t in g.initializer:
        known[t.name] = list(t.dims)
    at = {v.name: known[v.name] for v in g.input if v.name not in {t.name for t in g.initializer}}
    macs = 0
    for node in g.node:
        try:
            if node.op_type == "Conv":
                out, w = known[node.output[0]], known[node.input[1]]
                macs += _prod(out[1:]) * _prod(w[1:])
            elif node.op_type == "Gemm":
                a, out = known[node.input[0]], known[node.output[0]]
                trans_a = any(a_.name == "transA" and a_.i for a_ in node.attribute)
                macs += _prod(out[-1:]) * _prod([a[0] if trans_a else a[-1]])
            elif node.op_type == "MatMul":
                a, out = known[node.input[0]], known[node.output[0]]
                macs += _prod(out[1:] if len(out) > 2 else out[-1:]) * _prod(a[-1:])
        except (KeyError, IndexError):
            continue
        except _Unknown:
            return None, at
    return macs, at


class _Unknown(Exception):
    pass


def _prod(sizes) -> int:
    if any(d is None or d <= 0 for d in sizes):
        raise _Unknown
    return int(np.prod(sizes, dtype=np.int64))


def _at_shapes(onnx, proto, shapes: Mapping[str, tuple[int, ...]]):
    """A copy of the model whose inputs have these shapes, and a symbolic leading (batch) dim 1 elsewhere."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    proto = copy
    initializers = {t.name for t in proto.graph.initializer}
    for v in proto.graph.input:
        if v.name in initializers or not v.type.tensor_type.HasField("shape"):
            continue
        dims = v.type.tensor_type.shape.dim
        given = shapes.get(v.name)
        for i, d in enumerate(dims):
            if given is not None and i < len(given):
                d.dim_value = int(given[i])
            elif i == 0 and not d.HasField("dim_value"):
                d.dim_value = 1
    return proto
