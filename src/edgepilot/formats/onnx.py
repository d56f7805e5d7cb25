"""Read an ONNX model: IO specs, parameter count and a MAC estimate from shape inference."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepilot.errors import ModelError
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require


def describe(path: Path, fmt: Format = Format.ONNX) -> Model:
    onnx = require("onnx", "onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:  # DecodeError, ValidationError ... all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a valid ONNX model ({first})",
                         hint="the file may be truncated or corrupt; export it again") from e
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [_spec(onnx, v) for v in graph.input if v.name not in initializers]
    outputs = [_spec(onnx, v) for v in graph.output]
    params = _count_params(graph)
    files = [path] + [path.parent / loc for loc in _external_files(graph)]
    return Model(
        path=path, format=Format.ONNX, inputs=inputs, outputs=outputs, params=params,
        macs=_count_macs(onnx, proto), files=files,
        meta={"opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
              "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
              "ir_version": proto.ir_version},
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


def _count_macs(onnx, proto) -> int | None:
    """MACs of Conv, Gemm and MatMul for one sample; None when shapes cannot be inferred."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        return None
    g = inferred.graph
    shapes = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    macs = 0
    for node in g.node:
        try:
            if node.op_type == "Conv":
                out, w = shapes[node.output[0]], shapes[node.input[1]]
                macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
            elif node.op_type == "Gemm":
                a, out = shapes[node.input[0]], shapes[node.output[0]]
                trans_a = any(a_.name == "transA" and a_.i for a_ in node.attribute)
                macs += int(out[-1]) * int(a[0] if trans_a else a[-1])
            elif node.op_type == "MatMul":
                a, out = shapes[node.input[0]], shapes[node.output[0]]
                macs += int(np.prod(out[1:] if len(out) > 2 else out[-1:])) * int(a[-1])
        except (KeyError, IndexError):
            continue
    return macs
