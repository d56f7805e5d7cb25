"""Keras → TFLite in the four modes of the TFLite converter: float32, dynamic-range, float16, full int8."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, InputError, last_line, translate
from edgepilot.formats import TRUST_HINT
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["float32", "dynamic", "float16", "int8"] = "float32"
    io_dtype: Literal["int8", "uint8", "float32"] = Field("int8", description="I/O type of a full-int8 model")
    calibration_samples: int = Field(100, ge=1, description="representative samples for int8")


class KerasToTFLite(Pass):
    name = "keras-to-tflite"
    consumes = frozenset({Format.KERAS, Format.SAVEDMODEL})
    produces = Format.TFLITE
    Options = Options
    requires = ("tensorflow",)
    extra = "tf"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if model.format == Format.SAVEDMODEL and not ctx.trust_model_code:
            # the converter loads the SavedModel into TensorFlow, which runs its graph (initializers included)
            reasons.append(f"converting a SavedModel runs its graph code; {TRUST_HINT}")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        tf = require("tensorflow", "tf")
        if model.format == Format.SAVEDMODEL:
            conv = tf.lite.TFLiteConverter.from_saved_model(str(model.path))
        else:
            conv = tf.lite.TFLiteConverter.from_keras_model(
                tf.keras.models.load_model(str(model.path), compile=False, safe_mode=not ctx.trust_model_code))
        if options.precision != "float32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if options.precision == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if options.precision == "int8":
            samples = _representative(model, ctx, options.calibration_samples)
            conv.representative_dataset = lambda: ([s[None]] for s in samples)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if options.io_dtype != "float32":
                conv.inference_input_type = conv.inference_output_type = getattr(tf, options.io_dtype)
            ctx.notes["calibration_samples"] = len(samples)
        try:
            data = conv.convert()
        except Exception as e:
            raise translate(e, ConversionError, f"the TFLite converter failed on {model.path.name}", line=last_line,
                            limit=300, hint="an op of this model may lack a TFLite builtin kernel at this precision: "
                                            "another precision may convert") from e
        out = ctx.workdir / f"model_{options.precision}.tflite"
        out.write_bytes(data)
        return Model.load(out)


def _representative(model: Model, ctx: PassContext, n: int):
    if not ctx.calibration:
        raise InputError("full-int8 conversion needs calibration data", hint="pass --data with representative samples")
    if len(model.inputs) != 1:
        raise InputError("full-int8 conversion of multi-input Keras models is not supported")
    x = next(iter(ctx.calibration.values()))
    if len(x) == 0:
        raise InputError("the calibration set is empty")
    return x[:n].astype("float32")
