"""ONNX → ONNX simplified with onnxslim: constant folding, dead-node removal and operator fusion."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, last_line, translate
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext

_HINT = "the no_shape_infer or skip_fusion_patterns option skips the step it fails in"

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    no_shape_infer: bool = Field(False, description="skip shape inference (for graphs it cannot handle)")
    skip_fusion_patterns: list[str] = Field(default_factory=list,
                                            description="onnxslim fusion patterns to leave alone, e.g. FusionGelu")
    input_shapes: dict[str, list[int]] | None = Field(
        None, description="fix input shapes (name → dims) before folding; None keeps dynamic dims")
    size_threshold: int | None = Field(
        None, ge=0, description="do not fold constants larger than this many bytes (None folds all)")


class OnnxSimplify(Pass):
    name = "onnx-simplify"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Options = Options
    requires = ("onnx", "onnxslim")
    extra = "onnxtools"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if model.format == Format.ONNX and len(model.files) > 1:
            reasons.append("onnx-simplify takes a self-contained ONNX file, not one with external data")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        onnxslim = require("onnxslim", "onnxtools")
        onnx = require("onnx", "onnx")
        kwargs = {"no_shape_infer": options.no_shape_infer, "size_threshold": options.size_threshold}
        if options.skip_fusion_patterns:
            kwargs["skip_fusion_patterns"] = options.skip_fusion_patterns
        if options.input_shapes:
            # onnxslim parses shapes the way its command line does: NAME:D1,D2,...
            kwargs["input_shapes"] = [f"{k}:{','.join(map(str, v))}" for k, v in options.input_shapes.items()]
        try:
            slimmed = onnxslim.slim(str(model.path), **kwargs)
        except Exception as e:
            raise translate(e, ConversionError, f"onnxslim failed on {model.path.name}", line=last_line, limit=300,
                            hint=_HINT) from e
        if slimmed is None:  # onnxslim returns None when it gives up
            raise ConversionError(f"onnxslim could not simplify {model.path.name}", hint=_HINT)
        out = ctx.workdir / "model_slim.onnx"
        onnx.save(slimmed, str(out))
        before, after = _count_nodes(onnx, model), len(slimmed.graph.node)
        ctx.notes["nodes"] = {"before": before, "after": after}
        return Model.load(out)


def _count_nodes(onnx, model: Model) -> int:
    return len(onnx.load(str(model.path), load_external_data=False).graph.node)
