"""PyTorch (TorchScript or torch.export archive) → one self-contained ONNX file."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConversionError, InputError, translate
from edgepilot.formats import TRUST_HINT
from edgepilot.formats.torch import load_exported_program, load_torchscript
from edgepilot.model import Format, Model
from edgepilot.optional import require
from edgepilot.passes.base import Pass, PassContext


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opset: int = Field(17, ge=11, le=21)
    dynamic_batch: bool = True
    input_shape: list[int] | None = Field(None, description="example input shape where the file records none")


class TorchToOnnx(Pass):
    name = "torch-to-onnx"
    consumes = frozenset({Format.TORCHSCRIPT, Format.TORCH_EXPORT})
    produces = Format.ONNX
    Options = Options
    requires = ("torch", "onnx")
    extra = "torch"

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        reasons = super().why_not(model, ctx)
        if model.format == Format.TORCH_EXPORT and not ctx.trust_model_code:
            # torch.export.load evaluates the graph's shape expressions and exec's its guard code
            reasons.append(f"converting a torch.export program runs code from the archive; {TRUST_HINT}")
        return reasons

    def run(self, model: Model, options: Options, ctx: PassContext) -> Model:
        torch = require("torch", "torch")
        if model.format == Format.TORCH_EXPORT:
            module = load_exported_program(model.path).module()
        else:
            module = load_torchscript(model.path)
        # torch.export bakes a batch of 1 into the graph, so trace with 2 where the batch is to stay dynamic
        exported_dynamic = model.format == Format.TORCH_EXPORT and options.dynamic_batch and all(
            t.shape is not None and not isinstance(t.shape[0], int) for t in model.inputs)
        examples = []
        for i, t in enumerate(model.inputs):
            shape = options.input_shape if options.input_shape and i == 0 else None
            shape = shape or (t.concrete_shape(2 if exported_dynamic else 1) if t.shape is not None else None)
            if shape is None:
                raise InputError(f"{model.path}: the shape of input {t.name!r} is not recorded in the file",
                                 hint="give input_shape, e.g. [1, 3, 224, 224]")
            examples.append(torch.zeros(tuple(shape), dtype=getattr(torch, t.dtype)))
        names = [t.name for t in model.inputs]
        out = ctx.workdir / "model.onnx"
        dynamic = {n: {0: "batch"} for n in names} if options.dynamic_batch else None
        try:
            if model.format == Format.TORCH_EXPORT:
                # a torch.export graph goes through the dynamo exporter; external_data=False keeps one file
                torch.onnx.export(module, tuple(examples), str(out), input_names=names, dynamo=True,
                                  external_data=False, opset_version=options.opset,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},) * len(names)
                                  if exported_dynamic else None)
            else:
                torch.onnx.export(module, tuple(examples), str(out), input_names=names, output_names=["output"],
                                  dynamic_axes=dynamic | {"output": {0: "batch"}} if dynamic else None,
                                  dynamo=False, opset_version=options.opset)
        except Exception as e:
            raise translate(e, ConversionError, f"torch.onnx.export failed on {model.path.name}", limit=300,
                            hint=f"the exporter may lack an op of this model at opset {options.opset}: try another "
                                 "opset") from e
        return Model.load(out)
