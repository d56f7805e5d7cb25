"""ONNX or MNN → full-int8 MNN (weights and activations) with MNN's compiled offline quantizer and calibration data."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError
from edgepilot.model import Format, Model
from edgepilot.passes.base import Pass, PassContext
from edgepilot.passes.calibration import calibration_set

log = logging.getLogger(__name__)
# `_tools` is MNN's compiled quantizer (quantized.out), run in a fresh interpreter: it aborts a process
# that has TensorFlow loaded. Never MNN.tools or the mnnquant script: they report each run over the
# network. It takes the argv of quantized.out, program name first.
_QUANT = "import sys, _tools; _tools.mnnquant(['quantized.out', *sys.argv[1:]])"


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feature_method: Literal["KL", "ADMM", "EMA"] = Field(
        "KL", description="activation ranges: KL divergence (MNN's default), ADMM, or EMA (moving averages)")
    weight_method: Literal["MAX_ABS", "ADMM"] = Field("MAX_ABS", description="symmetric max-abs or ADMM weights")
    calibration_samples: int = Field(200, ge=1, description="at most this many samples (MNN runs them one by one)")
    skip_ops: list[str] = Field(default_factory=list, description="MNN op names to keep in float")
    feature_clamp_value: int = Field(
        127, ge=1, le=127, description="activation range ±value; lower it when many activations overflow")


class MNNQuantizeInt8(Pass):
    name = "mnn-quantize-int8"
    consumes = frozenset({Format.ONNX, Format.MNN})
    produces = Format.MNN
    Options = Options
    requires = ("_tools", "MNN")
    extra = "mnn"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if len(model.inputs) != 1:
            reasons.append("mnn-quantize-int8 supports single-input models here")
        if not ctx.calibration:
            reasons.append("full-int8 MNN needs calibration data (none given)")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        data = calibration_set(model, ctx, options.calibration_samples)
        spec = model.inputs[0]
        x = data[spec.name]
        shape = [1, *x.shape[1:]]  # MNN calibrates one sample at a time
        out = ctx.workdir / "model_int8.mnn"
        out.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
            tmp_dir = Path(tmp)
            source = model
            if model.format == Format.ONNX:
                from edgepilot.passes.onnx_to_mnn import OnnxToMNN

                converter = OnnxToMNN()
                source = converter.run(model, converter.options(precision="fp32"), PassContext(tmp_dir / "fp32"))
            samples = tmp_dir / "samples"
            for i, sample in enumerate(x):
                # quantized.out's "sequence" input: one folder per sample, <input name>.txt of values
                folder = samples / f"{i:06d}"
                folder.mkdir(parents=True)
                sample.astype("float32").tofile(folder / f"{spec.name}.txt", sep=" ", format="%.8g")
                (folder / "input.json").write_text(json.dumps({"inputs": [{"name": spec.name, "shape": shape}]}))
            config = tmp_dir / "quant.json"
            config.write_text(json.dumps({
                "input_type": "sequence", "path": str(samples.resolve()) + "/", "used_sample_num": len(x),
                "inputs": [{"name": spec.name, "shape": shape}], "feature_quantize_method": options.feature_method,
                "weight_quantize_method": options.weight_method, "feature_clamp_value": options.feature_clamp_value,
                "skip_quant_op_names": options.skip_ops}))
            done = subprocess.run([sys.executable, "-c", _QUANT, str(source.path), str(out), str(config)],
                                  check=False, capture_output=True, text=True, timeout=1800)
        said = [ln.strip() for ln in (done.stdout + done.stderr).replace("\r", "\n").splitlines() if ln.strip()]
        log.debug("MNN quantizer said: %s", " | ".join(said[-5:]))
        if done.returncode != 0 or not out.is_file():
            raise ConversionError(f"the MNN quantizer failed on {model.path.name} (exit {done.returncode})",
                                  hint=said[-1][:300] if said else None)
        ctx.notes["feature_method"] = options.feature_method
        return Model.load(out)
