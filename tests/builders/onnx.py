"""ONNX from the torch reference, with a dynamic batch dimension."""
from pathlib import Path

from builders import Built, sample, torch_model, torch_reference


def export_onnx(kind: str, path: Path, dynamic_batch: bool = True) -> Path:
    import torch

    x = torch.from_numpy(sample(kind, batch=1))
    torch.onnx.export(
        torch_model(kind), (x,), str(path), input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
        dynamo=False, opset_version=17,
    )
    return path


def build(kind: str, workdir: Path) -> Built:
    path = export_onnx(kind, workdir / f"{kind}.onnx")
    x = sample(kind)
    return Built(path, [x], [torch_reference(kind, x)], files=[path])
