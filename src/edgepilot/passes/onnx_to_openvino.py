"""ONNX or Keras → OpenVINO IR (.xml + .bin), fp32 or fp16 weights."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edgepilot.errors import ConversionError, translate
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16"] = "fp32"


class OnnxToOpenVINO(Pass):
    name = "to-openvino"
    consumes = frozenset({Format.ONNX, Format.KERAS, Format.SAVEDMODEL})
    produces = Format.OPENVINO
    Options = Options
    requires = ("openvino",)
    extra = "openvino"

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        ov = require("openvino", "openvino")
        source = str(model.path)
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
            if model.format == Format.KERAS:
                # OpenVINO cannot trace a Keras 3 model object; its SavedModel export it reads fine
                tf = require("tensorflow", "tf")
                source = str(Path(tmp) / "saved_model")
                tf.keras.models.load_model(str(model.path), compile=False, safe_mode=True).export(source, verbose=False)
            try:
                converted = ov.convert_model(source)
            except Exception as e:
                raise translate(e, ConversionError, f"OpenVINO could not convert {model.path.name}",
                                hint="OpenVINO's converter may lack an op of this model: check OpenVINO's "
                                     "supported operations for its frontend") from e
        xml = ctx.workdir / f"model_{options.precision}.xml"
        ov.save_model(converted, str(xml), compress_to_fp16=options.precision == "fp16")
        return Model.load(xml)
