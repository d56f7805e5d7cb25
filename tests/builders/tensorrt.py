"""TensorRT engine plan (fp32, TF32 off) built from the ONNX builder's model; needs TensorRT and a GPU."""
from pathlib import Path

from builders import BATCH, Built, sample, torch_reference
from builders.onnx import export_onnx

MAX_BATCH = 8


def build_plan(onnx_path: Path, plan_path: Path) -> Path:
    """The onnx-to-tensorrt pass's builder: plain fp32 (so the reference tolerance stays tight), batch 1..MAX_BATCH."""
    from edgepilot.passes.onnx_to_tensorrt import Options
    from edgepilot.passes.onnx_to_tensorrt import build_plan as build

    options = Options(precision="fp32", tf32=False, min_batch=1, opt_batch=BATCH, max_batch=MAX_BATCH)
    return build(onnx_path, plan_path, options, workdir=plan_path.parent)


def build(kind: str, workdir: Path) -> Built:
    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    x = sample(kind)
    path = build_plan(onnx_path, workdir / f"{kind}.engine")
    return Built(path, [x], [torch_reference(kind, x)], atol=1e-3, rtol=1e-3, files=[path])
