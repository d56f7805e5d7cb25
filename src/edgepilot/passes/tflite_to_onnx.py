"""TFLite → ONNX with tf2onnx's TFLite front-end, so a TFLite source reaches onnxruntime, OpenVINO, MNN and ncnn.

tf2onnx keeps the TFLite layout (NHWC inputs) and inserts the transposes ONNX's NCHW operators need.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, translate
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opset: int = Field(17, ge=13, le=18, description="ONNX opset to write")
    dynamic_batch: bool = Field(True, description="turn a batch of 1 into a dynamic one where Reshape ops allow it "
                                                  "(checked by running both); engines that resize inputs need it")


class TFLiteToOnnx(Pass):
    name = "tflite-to-onnx"
    consumes = frozenset({Format.TFLITE})
    produces = Format.ONNX
    Options = Options
    requires = ("tf2onnx", "tensorflow")
    extra = "onnxtools"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if "CUSTOM" in set(model.meta.get("ops") or []):
            reasons.append("the model has custom operators, which tf2onnx cannot convert")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        tf2onnx = require("tf2onnx", "onnxtools")
        out = ctx.workdir / "model.onnx"
        try:
            tf2onnx.convert.from_tflite(str(model.path), opset=options.opset, output_path=str(out))
        except Exception as e:  # tf2onnx raises ValueError/KeyError/... naming the op it cannot take
            raise translate(e, ConversionError, f"tf2onnx cannot convert {model.path.name}", limit=300,
                            hint=f"tf2onnx may lack an op of this model at opset {options.opset}: try another "
                                 "opset") from e
        ctx.notes["opset"] = options.opset
        if options.dynamic_batch:
            ctx.notes["dynamic_batch"] = _dynamic_batch(out)
        return Model.load(out)


def _dynamic_batch(path) -> bool:
    """Rewrite the model for any batch: the batch dim of its inputs and outputs named, the leading 1 of its
    constant Reshape shapes made 0 (copy the input's batch). Kept only where onnxruntime gives, for a batch
    of 2, what the batch-1 model gives for each sample."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    ends = [*m.graph.input, *m.graph.output]
    if not ends or any(not v.type.tensor_type.shape.dim or v.type.tensor_type.shape.dim[0].dim_value != 1
                       for v in ends):
        return False
    inits = {t.name: t for t in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.ndim == 1 and len(shape) and shape[0] == 1:
                shape[0] = 0
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    for v in ends:
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    del m.graph.value_info[:]
    candidate = path.with_name(path.stem + ".dynamic.onnx")
    onnx.save(m, str(candidate))
    try:
        same = _same_per_sample(path, candidate)
    except Exception:  # noqa: BLE001 - a rewrite onnxruntime cannot run is simply not kept
        same = False
    if same:
        candidate.replace(path)
    else:
        candidate.unlink()
    return same


def _same_per_sample(static, dynamic) -> bool:
    import numpy as np
    import onnxruntime as ort

    a = ort.InferenceSession(str(static), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = [{i.name: rng.standard_normal([1 if not isinstance(d, int) else d for d in i.shape]).astype(np.float32)
              for i in a.get_inputs()} for _ in range(2)]
    if any(i.type != "tensor(float)" for i in a.get_inputs()):
        return False
    want = [a.run(None, f) for f in feeds]
    got = b.run(None, {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    return all(g.shape[0] == 2 and all(np.allclose(g[k:k + 1], w[j], atol=1e-4, rtol=1e-3) for k, w in
                                       enumerate(want)) for j, g in enumerate(got))
