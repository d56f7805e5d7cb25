"""ONNX fp32 → fp16 weights and compute, keeping fp32 inputs and outputs (onnxconverter-common)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import RuntimeFailure
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
        try:
            converted = float16.convert_float_to_float16(
                proto, min_positive_val=options.min_positive_val, max_finite_val=options.max_finite_val,
                keep_io_types=options.keep_io_types, op_block_list=options.op_block_list,
                node_block_list=options.node_block_list or None)
        except Exception as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise RuntimeFailure(f"fp16 conversion of {model.path.name} failed: "
                                 f"{lines[-1][:300] if lines else type(e).__name__}") from e
        out = ctx.workdir / "model_fp16.onnx"
        onnx.save(converted, str(out))
        return Model.load(out)
