"""Model, Format and TensorSpec: what a model file is and what it takes and returns."""
from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgepilot.errors import ModelError

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


class Format(str, Enum):
    ONNX = "onnx"
    TFLITE = "tflite"
    KERAS = "keras"
    SAVEDMODEL = "savedmodel"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch-export"
    OPENVINO = "openvino"
    MNN = "mnn"
    NCNN = "ncnn"
    TENSORRT = "tensorrt"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Quantization:
    """Affine quantisation: real = scale * (q - zero_point); per-channel along `axis` when several."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @property
    def per_tensor(self) -> bool:
        return len(self.scale) == 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int8", ...
    shape: tuple[Dim, ...] | None  # None: rank unknown (e.g. TorchScript)
    quantization: Quantization | None = None

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)

    def shape_str(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def concrete_shape(self, batch: int = 1, overrides: dict[str, int] | None = None) -> tuple[int, ...]:
        """The shape with the leading symbolic dim set to `batch` and other symbolic dims named."""
        from edgepilot.errors import InputError

        if self.shape is None:
            raise InputError(f"input '{self.name}' has an unknown shape",
                             hint=f"give it: --shape {self.name}=1x3x224x224")
        out = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d >= 0:
                out.append(d)
            elif overrides and isinstance(d, str) and d in overrides:
                out.append(overrides[d])
            elif i == 0:
                out.append(batch)
            else:
                raise InputError(f"input '{self.name}' has a dynamic dimension {i} ({d or '?'})",
                                 hint=f"give it: --shape {self.name}=<dims separated by x>")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d


@dataclass
class Model:
    """A model file (or directory) and what inspection found in it."""

    path: Path
    format: Format
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    params: int | None = None
    macs: int | None = None  # multiply-accumulates for one sample, where countable
    files: list[Path] = field(default_factory=list)  # every file that makes up the model
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.is_file())

    @property
    def is_quantized(self) -> bool:
        return any(t.quantization is not None for t in self.inputs + self.outputs)

    @classmethod
    def load(cls, path: str | Path, *, trust_model_code: bool = False) -> Model:
        """Detect the format from the content and read the IO specs; never runs code from the file.

        `trust_model_code` lets a Keras model with Lambda layers load (their Python code then runs).
        """
        from edgepilot.formats import describe

        p = Path(path)
        return describe(p, detect_format(p), trust_model_code=trust_model_code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format.value,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "params": self.params,
            "macs": self.macs,
            "size_bytes": self.size_bytes,
            "files": [str(f) for f in self.files],
            "meta": self.meta,
        }


_EXTENSIONS = {
    ".onnx": Format.ONNX, ".tflite": Format.TFLITE, ".lite": Format.TFLITE, ".keras": Format.KERAS,
    ".h5": Format.KERAS, ".hdf5": Format.KERAS, ".xml": Format.OPENVINO, ".mnn": Format.MNN,
    ".param": Format.NCNN, ".engine": Format.TENSORRT, ".plan": Format.TENSORRT, ".trt": Format.TENSORRT,
    ".pt": Format.TORCHSCRIPT, ".pth": Format.TORCHSCRIPT, ".pt2": Format.TORCH_EXPORT,
}
EXPECTED = ("ONNX (.onnx), TFLite (.tflite), Keras (.keras/.h5), a SavedModel directory, "
            "TorchScript (.pt), torch.export (.pt2), OpenVINO IR (.xml + .bin), MNN (.mnn), "
            "ncnn (.param + .bin) or a TensorRT engine (.engine/.plan)")


def detect_format(path: Path) -> Format:
    """The format of a model file, from its bytes first and its extension second."""
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return Format.SAVEDMODEL
        raise ModelError(f"{path}: a directory that is not a TensorFlow SavedModel (no saved_model.pb)",
                         hint=f"expected {EXPECTED}")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{path}: empty file", hint=f"expected {EXPECTED}")
    with path.open("rb") as f:
        head = f.read(256)
    by_ext = _EXTENSIONS.get(path.suffix.lower())

    found: Format | None = None
    if len(head) >= 8 and head[4:8] == b"TFL3":
        found = Format.TFLITE
    elif head.startswith(b"\x89HDF\r\n\x1a\n"):
        found = Format.KERAS
    elif head.startswith(b"PK\x03\x04"):
        found = _zip_format(path)
    elif head.lstrip().startswith((b"<?xml", b"<net")):
        found = Format.OPENVINO
    elif head.split(b"\n", 1)[0].strip() == b"7767517":
        found = Format.NCNN
    elif by_ext in (Format.MNN, Format.TENSORRT):
        found = by_ext  # binary formats without a magic number: the loader validates them
    elif by_ext == Format.ONNX or (by_ext is None and head[:1] == b"\x08"):
        found = Format.ONNX  # a protobuf ModelProto starts with field 1 (ir_version)

    if found is None:
        if by_ext is not None:
            raise ModelError(f"{path}: the content is not a {by_ext.value} model "
                             f"(the extension says {by_ext.value}, the bytes do not)",
                             hint=_FORMAT_HINTS.get(by_ext))
        raise ModelError(f"{path}: unrecognised model format", hint=f"expected {EXPECTED}")
    if by_ext is not None and by_ext != found and not (by_ext == Format.TORCHSCRIPT and found == Format.TORCH_EXPORT):
        raise ModelError(f"{path}: the extension says {by_ext.value} but the content is {found.value}",
                         hint="rename the file to match its content")
    return found


_FORMAT_HINTS = {
    Format.TFLITE: "a TFLite flatbuffer carries the identifier 'TFL3' at byte 4",
    Format.KERAS: "a .keras file is a zip with config.json; a .h5 file is HDF5",
    Format.OPENVINO: "an OpenVINO IR is an XML file with a .bin file beside it",
    Format.NCNN: "an ncnn .param file starts with the magic line 7767517",
}


def _zip_format(path: Path) -> Format:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile as e:
        raise ModelError(f"{path}: a corrupt or truncated zip archive ({e})") from e
    if "config.json" in names and any(n.endswith(".weights.h5") or n.endswith(".h5") for n in names):
        return Format.KERAS
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        return Format.TORCH_EXPORT
    if any("/code/" in n for n in names):
        return Format.TORCHSCRIPT
    if any(n.endswith("data.pkl") for n in names):
        raise ModelError(f"{path}: a pickled PyTorch checkpoint (torch.save); edgepilot never unpickles",
                         hint="save the model with torch.jit.save(torch.jit.script(m), ...) or torch.export.save")
    raise ModelError(f"{path}: a zip archive that is neither a Keras nor a PyTorch model",
                     hint=f"expected {EXPECTED}")
