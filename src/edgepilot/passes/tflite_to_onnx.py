"""TFLite → ONNX with tf2onnx's TFLite front-end, so a TFLite source reaches onnxruntime, OpenVINO, MNN and ncnn.

tf2onnx keeps the TFLite layout (NHWC inputs) and inserts the transposes ONNX's NCHW operators need.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import RuntimeFailure
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opset: int = Field(17, ge=13, le=18, description="ONNX opset to write")


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
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise RuntimeFailure(f"tf2onnx cannot convert {model.path.name}: {msg}") from e
        ctx.notes["opset"] = options.opset
        return Model.load(out)
