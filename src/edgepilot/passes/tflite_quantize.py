"""TFLite → quantised TFLite with LiteRT's own quantiser (ai-edge-quantizer): dynamic-range int8, weight-only int8,
fp16 weights, and full int8 from calibration data.

The source is first rewritten into the form the quantiser takes (formats.tflite_edit.modernize): current op
codes, fp16 weights widened to fp32, a serving_default signature.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, EdgepilotError, translate
from edgepilot.formats import tflite_edit as edit
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext
from edgepilot.passes.calibration import calibration_set

_FLOAT16_RECIPE = [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
                    "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                                  "compute_precision": "FLOAT", "explicit_dequantize": True}}]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["dynamic", "int8-weights", "float16", "int8"] = Field(
        "dynamic", description="dynamic: int8 weights, activations quantised at run time; int8-weights: int8 "
                               "weights dequantised before float compute; float16: fp16 weights; int8: weights "
                               "and activations in int8 (calibrated), int8 I/O")
    calibration_samples: int = Field(100, ge=1, description="representative samples for int8")
    granularity: Literal["channelwise", "tensorwise"] = Field("channelwise", description="weight scales per")
    float_head: bool = Field(False, description="keep the ops from the last weight layers to the outputs in float "
                                                "(a detector's raw scores lose their sign in int8); not for float16")


class TFLiteQuantize(Pass):
    name = "tflite-quantize"
    consumes = frozenset({Format.TFLITE})
    produces = Format.TFLITE
    Options = Options
    requires = ("ai_edge_quantizer",)
    extra = "tf"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if model.format == Format.TFLITE and not reasons:
            stored = edit.weight_precision(model.path.read_bytes())
            if stored in (edit.INT8, edit.DYNAMIC_INT8, edit.INT8_WEIGHTS):
                reasons.append(f"{model.path.name} is already quantised ({stored}); quantise its float original")
            if "CUSTOM" in set(model.meta.get("ops") or []):
                reasons.append("the model has custom operators, which LiteRT's quantiser cannot run to calibrate")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        quantizer = require("ai_edge_quantizer.quantizer", "tf")
        qtyping = require("ai_edge_quantizer.qtyping", "tf")
        buf, changes = edit.modernize(model.path.read_bytes())
        ctx.notes.update({k: v for k, v in changes.items() if v})
        granularity = getattr(qtyping.QuantGranularity, options.granularity.upper())
        if options.precision == "float16":
            rp = _FLOAT16_RECIPE
        else:
            manager = require("ai_edge_quantizer.recipe_manager", "tf").RecipeManager()
            op = qtyping.TFLOperationName.ALL_SUPPORTED
            if options.precision == "dynamic":
                manager.add_dynamic_config(".*", op, 8, granularity)
            elif options.precision == "int8-weights":
                manager.add_weight_only_config(".*", op, 8, granularity)
            else:
                manager.add_static_config(".*", op, 8, 8, granularity)
            if options.float_head:
                head = edit.head_tensors(buf)
                for name in head:  # the quantiser names an op by its outputs: "a;b;"
                    manager.add_quantization_config(f"(^|;){re.escape(name)};", op, algorithm_key="no_quantize")
                ctx.notes["float_head_tensors"] = len(head)
            rp = manager.get_quantization_recipe()
        try:
            q = quantizer.Quantizer(buf, rp)
            calibration = None
            if q.need_calibration:
                calibration = q.calibrate(_calibration(model, buf, ctx, options.calibration_samples))
            result = q.quantize(calibration, enable_progress_report=False)
        except EdgepilotError:
            raise
        except Exception as e:  # the quantiser raises ValueError/RuntimeError with its reason
            raise translate(e, ConversionError, f"LiteRT's quantiser failed on {model.path.name}", limit=300,
                            hint="another precision or granularity option may quantise it") from e
        out = ctx.workdir / f"model_{options.precision}.tflite"
        out.write_bytes(bytes(result.quantized_model))
        return Model.load(out)


def _calibration(model: Model, buf: bytes, ctx: PassContext, limit: int) -> dict[str, list[dict]]:
    """The calibration set as the quantiser takes it: a list of one-sample feeds for the signature, keyed by
    the signature's input names."""
    data = calibration_set(model, ctx, limit)
    key, names = edit.signature_inputs(buf)
    n = len(next(iter(data.values())))
    return {key: [{names.get(name, name): x[i:i + 1] for name, x in data.items()} for i in range(n)]}
