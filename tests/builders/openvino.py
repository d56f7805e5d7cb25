"""OpenVINO IR (fp32) converted from the ONNX builder's model with the to-openvino pass."""
from pathlib import Path

from builders import Built, sample, torch_reference
from builders.onnx import export_onnx
from edgepilot.model import Model
from edgepilot.passes import PassContext, get_pass


def build(kind: str, workdir: Path) -> Built:
    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    p = get_pass("to-openvino")
    m = p.run(Model.load(onnx_path), p.options(precision="fp32"), PassContext(workdir))
    x = sample(kind)
    return Built(m.path, [x], [torch_reference(kind, x)], files=m.files)
