"""MNN (fp32) converted from the ONNX builder's model with the onnx-to-mnn pass."""
from pathlib import Path

from builders import Built, sample, torch_reference
from builders.onnx import export_onnx
from edgepilot.model import Model
from edgepilot.passes import PassContext, get_pass


def convert(onnx_path: Path, mnn_path: Path, precision: str = "fp32") -> Path:
    p = get_pass("onnx-to-mnn")
    out = p.run(Model.load(onnx_path), p.options(precision=precision), PassContext(mnn_path.parent)).path
    return out.rename(mnn_path)


def build(kind: str, workdir: Path) -> Built:
    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    path = convert(onnx_path, workdir / f"{kind}.mnn")
    x = sample(kind)
    return Built(path, [x], [torch_reference(kind, x)], files=[path])
