"""ONNX → MNN with MNN's compiled converter, fp32 or fp16 weights, or int8 weight quantisation."""
from __future__ import annotations

import subprocess
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edgepilot.errors import ConversionError
from edgepilot.model import Format, Model
from edgepilot.passes.base import Pass, PassContext

# `_tools` is MNN's compiled converter, run in a fresh interpreter: it bundles its own protobuf,
# which aborts a process that has TensorFlow's loaded. Never MNN.tools or the mnnconvert script:
# they pip-install a telemetry SDK and report every conversion.
_CONVERT = "import sys, _tools; _tools.mnnconvert(sys.argv[1:])"
_PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8-weights": ["--weightQuantBits", "8"]}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16", "int8-weights"] = "fp32"


class OnnxToMNN(Pass):
    name = "onnx-to-mnn"
    consumes = frozenset({Format.ONNX})
    produces = Format.MNN
    Options = Options
    requires = ("_tools", "MNN")
    extra = "mnn"

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        out = ctx.workdir / f"model_{options.precision}.mnn"
        out.unlink(missing_ok=True)  # the converter reports success even when it fails
        argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(model.path), "--MNNModel", str(out),
                "--bizCode", "edgepilot", *_PRECISION_FLAGS[options.precision]]
        done = subprocess.run([sys.executable, "-c", _CONVERT, *argv], check=False, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0 or not out.is_file():
            tail = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()][-2:]
            raise ConversionError(f"MNNConvert failed on {model.path.name} (exit {done.returncode})",
                                  hint=" | ".join(tail) or None)
        return Model.load(out)
