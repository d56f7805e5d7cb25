"""Keras / SavedModel → ONNX with tf2onnx's from_function (its from_keras fails on Keras 3)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, InputError, last_line, translate
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opset: int = Field(17, ge=11, le=21)
    dynamic_batch: bool = True


class KerasToOnnx(Pass):
    name = "keras-to-onnx"
    consumes = frozenset({Format.KERAS})
    produces = Format.ONNX
    Options = Options
    requires = ("tensorflow", "tf2onnx")
    extra = "onnxtools"

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        tf = require("tensorflow", "tf")
        tf2onnx = require("tf2onnx", "onnxtools")
        keras_model = tf.keras.models.load_model(str(model.path), compile=False, safe_mode=not ctx.trust_model_code)
        specs = []
        for t in model.inputs:
            if t.shape is None:
                raise InputError(f"input {t.name!r} of {model.path} has no known shape")
            shape = (None if options.dynamic_batch else 1,) + tuple(t.shape[1:])
            specs.append(tf.TensorSpec(shape, tf.as_dtype(t.dtype), name=t.name))
        fn = tf.function(lambda *xs: keras_model(list(xs) if len(xs) > 1 else xs[0], training=False))
        out = ctx.workdir / "model.onnx"
        try:
            tf2onnx.convert.from_function(fn, input_signature=specs, opset=options.opset, output_path=str(out))
        except Exception as e:
            raise translate(e, ConversionError, f"tf2onnx failed on {model.path.name}", line=last_line, limit=300,
                            hint=f"tf2onnx may lack an op of this model at opset {options.opset}: try another opset, "
                                 "or the TFLite and OpenVINO variants, which convert Keras without it") from e
        return Model.load(out)
