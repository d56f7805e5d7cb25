"""ncnn (fp32 weights) converted from the ONNX builder's model with the onnx-to-ncnn pass."""
from pathlib import Path

from builders import Built, sample, torch_reference
from builders.onnx import export_onnx
from edgepilot.model import Model
from edgepilot.passes import PassContext, get_pass


def build(kind: str, workdir: Path) -> Built:
    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    p = get_pass("onnx-to-ncnn")
    param = p.run(Model.load(onnx_path), p.options(precision="fp32"), PassContext(workdir)).path
    x = sample(kind)
    # ncnn keeps weights in fp16 and computes in fp16 where the CPU can (x86 with F16C, ARMv8.2):
    # about 1e-4 off the fp32 reference on these models.
    return Built(param, [x], [torch_reference(kind, x)], atol=1e-3, rtol=1e-3,
                 files=[param, param.with_suffix(".bin")])
