"""ONNX → ncnn (.param + .bin) with the pnnx converter, fp32 or fp16 weights."""
from __future__ import annotations

import subprocess
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edgepilot.errors import ConversionError, InputError
from edgepilot.formats.ncnn import set_input_shapes
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext

# Every pnnx output named explicitly, so nothing lands in the working directory.
_OUTPUTS = {"pnnxparam": ".pnnx.param", "pnnxbin": ".pnnx.bin", "pnnxpy": "_pnnx.py", "pnnxonnx": ".pnnx.onnx",
            "ncnnparam": ".param", "ncnnbin": ".bin", "ncnnpy": "_ncnn.py"}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16"] = "fp32"


class OnnxToNcnn(Pass):
    name = "onnx-to-ncnn"
    consumes = frozenset({Format.ONNX})
    produces = Format.NCNN
    Options = Options
    requires = ("pnnx", "ncnn")
    extra = "ncnn"

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        pnnx = require("pnnx", "ncnn")
        if len(model.inputs) != 1:
            raise InputError("ONNX → ncnn supports single-input models here")
        spec = model.inputs[0]
        given = (ctx.input_shapes or {}).get(spec.name)
        shape = (1, *given[1:]) if given else spec.concrete_shape(1)  # pnnx traces at a concrete shape, batch 1
        stem = ctx.workdir.resolve() / f"model_{options.precision}"  # pnnx runs in workdir: absolute paths
        # The binary directly: pnnx.convert() ignores its exit status and then runs the Python it generated.
        argv = [pnnx.EXEC_PATH, str(model.path.resolve()), "inputshape=[" + ",".join(map(str, shape)) + "]",
                f"fp16={int(options.precision == 'fp16')}", *(f"{k}={stem}{suffix}" for k, suffix in _OUTPUTS.items())]
        # pnnx also writes <source>.pnnxsim.onnx beside its input: inside the source variant's folder
        sim = model.path.with_name(model.path.stem + ".pnnxsim.onnx")
        stray = not sim.exists()
        try:
            done = subprocess.run(argv, cwd=ctx.workdir, check=False, capture_output=True, text=True, timeout=600)
        finally:
            if stray:
                sim.unlink(missing_ok=True)
        param = stem.with_suffix(".param")
        if done.returncode != 0 or not param.is_file():
            tail = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()][-2:]
            raise ConversionError(f"pnnx failed on {model.path.name} (exit {done.returncode})",
                                  hint=" | ".join(tail) or None)
        for suffix in ("_pnnx.py", "_ncnn.py", ".pnnx.onnx", ".pnnx.param", ".pnnx.bin"):
            stem.with_name(stem.name + suffix).unlink(missing_ok=True)  # intermediates, not deliverables
        set_input_shapes(param, {"in0": shape[1:]})  # ncnn blobs carry no batch: record the per-sample shape
        return Model.load(param)
