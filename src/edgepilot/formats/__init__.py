"""Read a model file of each format into a Model: one module per format, each with `describe(path)`.

Reading never runs code from the file. Keras models with Python code in them (Lambda layers) are
read only when the user trusts the file: `trust_model_code`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from edgepilot.model import Format, Model

_DESCRIBERS = {
    Format.ONNX: "edgepilot.formats.onnx",
    Format.TFLITE: "edgepilot.formats.tflite",
    Format.KERAS: "edgepilot.formats.keras",
    Format.SAVEDMODEL: "edgepilot.formats.keras",
    Format.TORCHSCRIPT: "edgepilot.formats.torch",
    Format.TORCH_EXPORT: "edgepilot.formats.torch",
    Format.OPENVINO: "edgepilot.formats.openvino",
    Format.MNN: "edgepilot.formats.mnn",
    Format.NCNN: "edgepilot.formats.ncnn",
    Format.TENSORRT: "edgepilot.formats.tensorrt",
}
TRUST_HINT = "if you trust this file, pass --trust-model-code to optimize (trust_model_code: true in a recipe)"


def describe(path: Path, fmt: Format, *, trust_model_code: bool = False) -> Model:
    module = importlib.import_module(_DESCRIBERS[fmt])
    if trust_model_code and fmt == Format.KERAS:  # the one reader that can run code, when told to
        return module.describe(path, fmt, trust_model_code=True)
    return module.describe(path, fmt)


def macs_at(model: Model, shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[int | None, dict]:
    """MACs for one sample at these input shapes, and the shapes they hold at; (None, {}) where the format's
    reader cannot count them."""
    count = getattr(importlib.import_module(_DESCRIBERS[model.format]), "macs_at", None)
    if count is None:
        return (model.macs, model.meta.get("macs_at", {})) if not shapes else (None, {})
    return count(model.path, shapes)
