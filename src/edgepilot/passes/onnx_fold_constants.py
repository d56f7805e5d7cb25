"""ONNX → ONNX with the tensors of Constant nodes moved into initializers (paddle2onnx keeps weights in Constants).

Quantisers, param counts and most converters look for weights among the initializers only: onnxruntime's
quantizer leaves a Constant-held weight in float and wraps it in extra QDQ nodes, so the "int8" model
grows instead of shrinking. Moving each Constant's tensor into an initializer of the same name changes no
value, so the folded model computes exactly what the source does.
"""
from __future__ import annotations

import shutil

from edgepilot.errors import ModelError
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class OnnxFoldConstants(Pass):
    name = "onnx-fold-constants"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    requires = ("onnx",)
    extra = "onnx"

    def run(self, model: Model, options, ctx: PassContext) -> Model:
        onnx = require("onnx", "onnx")
        try:
            proto = onnx.load(str(model.path))
        except Exception as e:
            raise ModelError(f"{model.path.name}: cannot read the ONNX model ({e})") from e
        folded = fold_constants(proto)
        ctx.notes["constants_folded"] = folded
        out = ctx.workdir / model.path.name
        if folded == 0:  # nothing to move: keep the source files byte for byte (external data included)
            for f in model.files:
                shutil.copy2(f, ctx.workdir / f.name)
            return Model.load(out)
        external = len(model.files) > 1 or proto.ByteSize() > 2**31 - 2**20  # protobuf's 2 GiB ceiling
        onnx.save(proto, str(out), save_as_external_data=external, location=f"{out.name}.data")
        return Model.load(out)


def fold_constants(proto) -> int:
    """Move the tensor of every main-graph Constant node into an initializer; the number of nodes moved.

    Left as they are: Constants whose value is an attribute other than `value` (value_float, sparse_value
    ...: scalars and rarities, never weights) and Constants that feed a graph output directly.
    """
    graph = proto.graph
    graph_outputs = {o.name for o in graph.output}
    folded = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Constant" or node.domain or node.output[0] in graph_outputs:
            continue
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None:
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            folded.append(i)
    if proto.ir_version < 4:  # before IR 4 every initializer also had to be a graph input
        onnx = require("onnx", "onnx")
        graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                           for t in graph.initializer[len(graph.initializer) - len(folded):])
    for i in reversed(folded):
        del graph.node[i]
    return len(folded)
