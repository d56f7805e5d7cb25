"""Tiny ONNX classifiers, keys and bundles for the deploy tests (built with onnx.helper: no PyTorch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepilot.deploy import build, signing
from edgepilot.deploy.bundle import Gates

FEATURES, CLASSES = 8, 4


def classifier(path: Path, seed: int = 0, *, permute: bool = False, scale: float = 1.0) -> Path:
    """y = softmax(x @ W + b): [1, 8] -> [1, 4]. `permute` swaps the classes (a model that disagrees); `scale`
    multiplies the logits (the same top-1 class, a flatter or sharper confidence)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    b = rng.standard_normal(CLASSES).astype(np.float32)
    if permute:
        w, b = w[:, ::-1].copy(), b[::-1].copy()
    w, b = (w * scale).astype(np.float32), (b * scale).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["output"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def keys(tmp: Path, name: str = "key") -> tuple[Path, Path]:
    return signing.keygen(tmp / name)


def make_bundle(tmp: Path, key: Path, version: int = 1, *, model: Path | None = None, gates: Gates | None = None,
                reference: Path | None = None, out: Path | None = None, **kw) -> Path:
    model = model or classifier(tmp / f"model-v{version}.onnx", seed=version)
    out = out or tmp / f"app-v{version}.edgebundle"
    build.build(model, out, key, version=version, target="rpi4", gates=gates or Gates(min_agreement=0.99),
                name="app", engine="onnxruntime", reference=reference, samples=4, **kw)
    return out
