"""MNN (fp32) converted from the ONNX builder's model with MNN's compiled converter."""
import subprocess
import sys
from pathlib import Path

from builders import Built, sample, torch_reference
from builders.onnx import export_onnx

# `_tools` is MNN's compiled converter, run in a fresh interpreter: it bundles its own protobuf,
# which aborts the process when TensorFlow's is already loaded. Never MNN.tools: its logger
# pip-installs a telemetry SDK and reports every conversion.
_CONVERT = "import sys, _tools; _tools.mnnconvert(sys.argv[1:])"


def convert(onnx_path: Path, mnn_path: Path, *options: str) -> Path:
    argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(mnn_path),
            "--bizCode", "edgepilot", *options]
    mnn_path.unlink(missing_ok=True)  # the converter reports success even when it fails
    done = subprocess.run([sys.executable, "-c", _CONVERT, *argv], check=False, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0 or not mnn_path.is_file():
        raise RuntimeError(f"MNNConvert failed on {onnx_path} (exit {done.returncode}): "
                           f"{(done.stdout + done.stderr)[-2000:]}")
    return mnn_path


def build(kind: str, workdir: Path) -> Built:
    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    path = convert(onnx_path, workdir / f"{kind}.mnn")
    x = sample(kind)
    return Built(path, [x], [torch_reference(kind, x)], files=[path])
