"""Tiny reference models (a CNN and an MLP) converted into every format, for the engine tests.

A builder module per format has `build(kind, workdir) -> Built`. Torch-family formats are checked
against PyTorch eager outputs; TFLite against Keras outputs. A new format is covered by adding
its module to BUILDERS.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepilot.model import Format

KINDS = ("cnn", "mlp")
BATCH = 2

BUILDERS = {
    Format.ONNX: "builders.onnx",
    Format.TFLITE: "builders.tflite",
    Format.OPENVINO: "builders.openvino",
    Format.MNN: "builders.mnn",
    Format.NCNN: "builders.ncnn",
    Format.TENSORRT: "builders.tensorrt",
}


@dataclass
class Built:
    path: Path
    inputs: list[np.ndarray]  # in the model's input order
    expected: list[np.ndarray]  # in the model's output order
    atol: float = 1e-4
    rtol: float = 1e-3
    files: list[Path] = field(default_factory=list)


def sample(kind: str, batch: int = BATCH, layout: str = "nchw") -> np.ndarray:
    """Seeded synthetic input for a tiny model."""
    rng = np.random.default_rng(42)
    if kind == "mlp":
        return rng.standard_normal((batch, 64)).astype(np.float32)
    shape = (batch, 3, 32, 32) if layout == "nchw" else (batch, 32, 32, 3)
    return rng.standard_normal(shape).astype(np.float32)


def torch_model(kind: str):
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    if kind == "mlp":
        m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    elif kind == "dense":  # the CNN's input, 10.5 M weights: weight-bound, so a batch costs little more than a sample
        m = nn.Sequential(nn.Flatten(), nn.Linear(3072, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                          nn.Linear(2048, 10))
    else:
        m = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, 10),
        )
    return m.eval()


def torch_reference(kind: str, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch_model(kind)(torch.from_numpy(x)).numpy()


def keras_model(kind: str):
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    if kind == "mlp":
        layers = [keras.Input((64,), name="input"), L.Dense(32, activation="relu"), L.Dense(10)]
    else:
        layers = [
            keras.Input((32, 32, 3), name="input"),
            L.Conv2D(8, 3, padding="same", activation="relu"), L.MaxPooling2D(2),
            L.Conv2D(16, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
            L.Dense(10),
        ]
    return keras.Sequential(layers)


def build(fmt: Format, kind: str, workdir: Path) -> Built:
    module = importlib.import_module(BUILDERS[fmt])
    workdir.mkdir(parents=True, exist_ok=True)
    return module.build(kind, workdir)
