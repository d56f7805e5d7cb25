"""ONNX fp32 → fp16 weights and compute, keeping fp32 inputs and outputs (onnxconverter-common), with two repairs.

onnxconverter-common's converter gets two things wrong on real exports, and both are fixed here:
- On YOLOv8 exports (ultralytics, PyTorch ≥ 2) it retypes the outputs of `Cast(to=FLOAT)` nodes in the anchor
  grid to float16 but leaves their `to` attribute at FLOAT: onnxruntime refuses the file ("Type Error: Type
  (tensor(float16)) of output arg ... does not match expected type (tensor(float))"). Such Casts are retargeted
  to FLOAT16, the type the rest of the converted graph expects of them.
- Weights beyond `max_finite_val` are clamped to it; PaddleOCR's v4 text detector holds a BatchNorm variance of
  9.8e7, and clamping it wrecks the probability map (mask IoU 0.38 vs fp32). The nodes that read such weights
  stay in fp32 instead.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, last_line, translate
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_io_types: bool = Field(True, description="keep fp32 inputs/outputs (Cast nodes at the edges), "
                                                  "so callers feed and read float32 as before")
    op_block_list: list[str] | None = Field(
        None, description="op types to keep in fp32; None uses onnxconverter-common's default list")
    node_block_list: list[str] = Field(default_factory=list, description="node names to keep in fp32")
    min_positive_val: float = Field(1e-7, gt=0, description="smaller non-zero weights are clamped to this")
    max_finite_val: float = Field(1e4, gt=0, description="larger weights are clamped to this (fp16 max is 65504)")
    keep_out_of_range: bool = Field(True, description="keep the nodes whose float weights exceed max_finite_val "
                                                      "in fp32 rather than clamping those weights")


class OnnxFp16(Pass):
    name = "onnx-fp16"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Options = Options
    requires = ("onnx", "onnxconverter_common")
    extra = "onnxtools"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if model.format == Format.ONNX and not any(t.dtype == "float32" for t in model.inputs + model.outputs):
            reasons.append("the model has no float32 inputs or outputs: it is not an fp32 model")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        onnx = require("onnx", "onnx")
        float16 = require("onnxconverter_common.float16", "onnxtools")
        proto = onnx.load(str(model.path))
        blocked = out_of_range_nodes(proto, options.max_finite_val) if options.keep_out_of_range else []
        node_block_list = list(dict.fromkeys([*options.node_block_list, *blocked]))
        try:
            converted = float16.convert_float_to_float16(
                proto, min_positive_val=options.min_positive_val, max_finite_val=options.max_finite_val,
                keep_io_types=options.keep_io_types, op_block_list=options.op_block_list,
                node_block_list=node_block_list or None)
        except Exception as e:
            raise translate(e, ConversionError, f"fp16 conversion of {model.path.name} failed", line=last_line,
                            limit=300, hint="keep the nodes it fails on in fp32 with the node_block_list or "
                                            "op_block_list option") from e
        retargeted = retarget_casts(converted.graph)
        ctx.notes["kept_fp32_out_of_range"] = blocked
        ctx.notes["casts_retargeted"] = retargeted
        out = ctx.workdir / "model_fp16.onnx"
        onnx.save(converted, str(out))
        return Model.load(out)


def out_of_range_nodes(proto, limit: float) -> list[str]:
    """Names of the nodes that read a float32 weight with a magnitude over `limit`, for the converter's block list.

    Where a Constant node holds such a weight (paddle2onnx exports), the Constants are folded into initializers
    first: the converter casts a blocked Constant's output to fp16 after it (inf), while it leaves a blocked
    node's initializers in fp32. Unnamed readers get a name, since the converter blocks by name."""
    from onnx import TensorProto, numpy_helper

    from edgepilot.passes.onnx_fold_constants import fold_constants

    def too_big(t) -> bool:
        return t.data_type == TensorProto.FLOAT and bool(np.abs(numpy_helper.to_array(t)).max(initial=0) > limit)

    graph = proto.graph
    if any(n.op_type == "Constant" and any(a.name == "value" and too_big(a.t) for a in n.attribute)
           for n in graph.node):
        fold_constants(proto)
    big = {t.name for t in graph.initializer if too_big(t)}
    names = []
    for i, node in enumerate(n for n in graph.node if big.intersection(n.input)):
        if not node.name:
            node.name = f"edgepilot_fp32_{i}_{node.op_type}"
        names.append(node.name)
    return names


def retarget_casts(graph) -> list[str]:
    """Make every `Cast(to=FLOAT)` whose output the converted graph declares float16 cast to FLOAT16; their names."""
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    fixed = []
    for node in graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for a in node.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
                fixed.append(node.name or node.output[0])
    return fixed
