"""OpenVINO IR (fp32) converted from the ONNX builder's model."""
from pathlib import Path

from builders import Built, sample, torch_reference
from builders.onnx import export_onnx


def build(kind: str, workdir: Path) -> Built:
    import openvino as ov

    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    xml = workdir / f"{kind}.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    x = sample(kind)
    return Built(xml, [x], [torch_reference(kind, x)], files=[xml, xml.with_suffix(".bin")])
