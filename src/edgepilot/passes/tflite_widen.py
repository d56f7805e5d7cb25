"""fp16 TFLite → fp32 TFLite: the fp16 weights behind DEQUANTIZE ops stored as fp32 (nothing else changes).

The float32 variant the other TFLite passes and the TFLite → ONNX conversion start from, for sources that
ship fp16 weights (MediaPipe's models do); it computes exactly what the source computes.
"""
from __future__ import annotations

from edgepilot.formats.tflite_edit import FP16, FP32, modernize, weight_precision
from edgepilot.model import Format, Model
from edgepilot.passes.base import Pass, PassContext


class TFLiteWiden(Pass):
    name = "tflite-widen"
    consumes = frozenset({Format.TFLITE})
    produces = Format.TFLITE
    requires = ("ai_edge_litert",)
    extra = "tflite"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if not reasons:
            stored = weight_precision(model.path.read_bytes())
            if stored not in (FP16, FP32):
                reasons.append(f"{model.path.name} holds {stored} weights: their float originals are lost")
        return reasons

    def run(self, model: Model, options, ctx: PassContext) -> Model:
        buf, changes = modernize(model.path.read_bytes())
        ctx.notes.update({k: v for k, v in changes.items() if v})
        out = ctx.workdir / "model_float32.tflite"
        out.write_bytes(buf)
        return Model.load(out)
