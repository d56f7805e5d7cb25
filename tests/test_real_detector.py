"""A real YOLOv8n detector nobody here made — NudeNet's 320n.onnx from the nudenet==3.4.2 wheel (dynamic batch
and H/W, output [batch, 22, N]: 4 box values and 18 class scores) — and the onnx-fp16 pass on the two real
exports that onnxconverter-common alone gets wrong: this detector and PaddleOCR's v4 text detector."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgepilot.assets import asset
from edgepilot.errors import UnavailableError
from edgepilot.evaluate.metrics.detection import decode, detection_score
from edgepilot.evaluate.metrics.segmentation import mask_iou
from edgepilot.evaluate.tasks import ran_at, resolve
from edgepilot.model import Model
from edgepilot.passes import PassContext, get_pass

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick")
FACE_FEMALE = 1  # NudeNet's class ids, by its label list
ASTRONAUT_FACE = np.array([180, 78, 274, 176]) * 320 / 512  # x0, y0, x1, y1 of the face, in the 320×320 input


def cached(name: str):
    try:
        return asset(name, download=False)
    except UnavailableError as e:
        pytest.skip(e.message)


def letterboxed() -> np.ndarray:
    """Each photo and its mirror image, padded right/bottom to a square and resized to 320 (NudeNet's way), NCHW."""
    out = []
    for name in PHOTOS:
        img = cv2.cvtColor(cv2.imread(str(cached(f"photo-{name}"))), cv2.COLOR_BGR2RGB)
        for view in (img, np.ascontiguousarray(img[:, ::-1])):
            side = max(view.shape[:2])
            square = np.zeros((side, side, 3), np.uint8)
            square[:view.shape[0], :view.shape[1]] = view
            out.append(cv2.resize(square, (320, 320), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 255)
    return np.stack(out).astype(np.float32)


def run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def nudenet():
    return Model.load(cached("nudenet-320n"))


@pytest.fixture(scope="module")
def photos():
    return letterboxed()


def test_nudenet_is_a_yolov8_detector_at_the_datas_size_and_finds_the_astronauts_face(nudenet, photos):
    assert not nudenet.inputs[0].is_static and not nudenet.outputs[0].is_static  # dynamic batch and H/W
    out = run(nudenet.path, photos)
    assert out.shape == (len(photos), 22, 2100)
    spec = resolve(ran_at(nudenet, photos[:1].shape, {"output0": out}))
    assert spec.task == "detection" and spec.postprocess.type == "yolov8" and spec.input_size == (320, 320)
    boxes = decode(spec.postprocess, spec.outputs, spec.input_size, {"output0": out})
    face = boxes[0]  # the astronaut, not mirrored
    assert FACE_FEMALE in face.classes
    hit = face.boxes[list(face.classes).index(FACE_FEMALE)]
    assert np.abs(hit - ASTRONAUT_FACE).max() < 20  # observed within ~8 px
    assert sum(len(b.scores) for b in boxes[4:]) == 0  # coffee, a cat, a rocket and bricks: no body parts


def test_fp16_of_the_yolov8_export_loads_and_keeps_every_box(nudenet, photos, tmp_path):
    p = get_pass("onnx-fp16")
    ctx = PassContext(tmp_path)
    half = p.run(nudenet, p.options(), ctx)
    assert len(ctx.notes["casts_retargeted"]) == 6  # the anchor grid's Casts of the feature-map sizes
    assert half.size_bytes < 0.55 * nudenet.size_bytes
    want, got = run(nudenet.path, photos), run(half.path, photos)  # it loads: no Cast type mismatch
    spec = resolve(ran_at(nudenet, photos[:1].shape, {"output0": want}))

    def boxes(out):
        return decode(spec.postprocess, spec.outputs, spec.input_size, {"output0": out})

    score = detection_score(boxes(got), boxes(want))
    assert score.truth >= 4 and score.precision == score.recall == 1.0  # observed: all 4 boxes, same classes


def text_on_photos() -> np.ndarray:
    """Photo crops with printed words on them, normalised as PaddleOCR does, NCHW: a text detector has text to find."""
    from test_real_models import crops

    imgs = ((crops(320, 320).transpose(0, 2, 3, 1) * 0.5 + 0.5) * 255).astype(np.uint8).copy()
    for im in imgs:
        cv2.putText(im, "EDGE 2026", (20, 100), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 255, 255), 4)
        cv2.putText(im, "pilot text", (30, 220), cv2.FONT_HERSHEY_DUPLEX, 1.0, (0, 0, 0), 3)
    return np.ascontiguousarray(((imgs.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2))


def test_fp16_of_the_text_detector_keeps_its_out_of_range_batchnorm_in_fp32(tmp_path):
    fold, fp16 = get_pass("onnx-fold-constants"), get_pass("onnx-fp16")
    source = fold.run(Model.load(cached("ppocr-det-v4")), fold.options(), PassContext(tmp_path / "fold"))
    x = text_on_photos()
    want = run(source.path, x)
    assert 0.01 < (want > 0.5).mean() < 0.2  # the premise: text found (observed 0.04 of the pixels)

    ctx = PassContext(tmp_path / "fp16")
    half = fp16.run(source, fp16.options(), ctx)
    assert ctx.notes["kept_fp32_out_of_range"] == ["p2o.BatchNormalization.1"]  # its variance holds 9.8e7
    assert mask_iou(run(half.path, x), want) > 0.98  # observed 0.999

    clamped = fp16.run(source, fp16.options(keep_out_of_range=False), PassContext(tmp_path / "clamped"))
    assert mask_iou(run(clamped.path, x), want) < 0.6  # observed 0.32: the variance clamped to 1e4


@pytest.mark.slow
def test_optimize_nudenet_scores_detection_and_keeps_a_working_fp16(nudenet, photos, tmp_path):
    np.savez(tmp_path / "photos.npz", x=photos)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", "from edgepilot.cli import main; main()", "optimize", str(nudenet.path),
         "--data", str(tmp_path / "photos.npz"), "--formats", "onnx", "--out", str(out), "--seconds", "0.1",
         "--max-accuracy-drop", "1"],  # no gate retries: their time is spent in test_retries
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "150"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["task"].startswith("detection, yolov8 decoder") and report["task_metric"] == "detection F1 at IoU 0.5"
    lineage = {v["variant"]: v for v in json.loads((out / "lineage.json").read_text())["variants"]}
    assert lineage["onnx-fp16"]["status"] == "ok", lineage["onnx-fp16"]["reason"]
    assert len(lineage["onnx-fp16"]["notes"]["casts_retargeted"]) == 6
    rows = {r["variant"]: r for r in report["variants"]}
    assert rows["onnx-fp16"]["agreement"]["f1"] == rows["onnx-fp16"]["agreement"]["map50"] == 1.0
    for r in rows.values():  # dynamic H/W: every variant timed at the data's 320×320
        assert r["latency"]["p50_ms"] > 0 and r["latency"]["shapes"]["images"] == [1, 3, 320, 320]
