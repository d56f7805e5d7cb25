"""ncnn (fp32 weights) converted from the ONNX builder's model with pnnx."""
import subprocess
from pathlib import Path

from builders import Built, sample, torch_reference
from builders.onnx import export_onnx
from edgepilot.formats.ncnn import set_input_shapes


def convert(onnx_path: Path, param: Path, shape: tuple[int, ...]) -> Path:
    # The pnnx binary directly: pnnx.convert() ignores the binary's exit status and then imports
    # (and runs) the Python file it generated. Every output is named so none lands in the cwd.
    import pnnx

    stem = param.with_suffix("")
    outputs = {"pnnxparam": ".pnnx.param", "pnnxbin": ".pnnx.bin", "pnnxpy": "_pnnx.py",
               "pnnxonnx": ".pnnx.onnx", "ncnnparam": ".param", "ncnnbin": ".bin", "ncnnpy": "_ncnn.py"}
    argv = [pnnx.EXEC_PATH, str(onnx_path), "inputshape=[" + ",".join(map(str, shape)) + "]", "fp16=0",
            *(f"{key}={stem}{suffix}" for key, suffix in outputs.items())]
    done = subprocess.run(argv, cwd=param.parent, check=False, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not param.is_file():
        raise RuntimeError(f"pnnx failed on {onnx_path} (exit {done.returncode}): {done.stderr[-2000:]}")
    # ncnn blobs have no batch: the Input layer records the per-sample shape
    set_input_shapes(param, {"in0": shape[1:]})
    return param


def build(kind: str, workdir: Path) -> Built:
    onnx_path = export_onnx(kind, workdir / f"{kind}-src.onnx")
    x = sample(kind)
    param = convert(onnx_path, workdir / f"{kind}.param", (1, *x.shape[1:]))
    # ncnn keeps weights in fp16 and computes in fp16 where the CPU can (x86 with F16C, ARMv8.2):
    # about 1e-4 off the fp32 reference on these models.
    return Built(param, [x], [torch_reference(kind, x)], atol=1e-3, rtol=1e-3,
                 files=[param, param.with_suffix(".bin")])
