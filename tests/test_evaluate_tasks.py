"""Task-aware agreement: metrics with known answers, task inference, real BlazeFace detections, the gates on them."""
from __future__ import annotations

import numpy as np
import pytest

from builders import sample
from builders.onnx import export_onnx
from edgepilot.assets import asset
from edgepilot.engines import open_session
from edgepilot.evaluate.accuracy import predict
from edgepilot.evaluate.metrics.classification import topk_agreement
from edgepilot.evaluate.metrics.detection import Boxes, detection_score
from edgepilot.evaluate.metrics.segmentation import mask_iou
from edgepilot.evaluate.metrics.tensors import cosine, tensor_errors
from edgepilot.evaluate.tasks import align, infer_task, resolve, score
from edgepilot.model import Model

# --- metrics on arrays with known answers ----------------------------------------------------------------------


def test_tensor_errors_and_cosine_known_answers():
    b = np.array([[3.0, 4.0]])
    e = tensor_errors(b + [[1.0, 0.0]], b)
    assert e["max_abs_error"] == 1 and e["max_rel_error"] == pytest.approx(0.25)
    assert e["sqnr_db"] == pytest.approx(10 * np.log10(25))  # signal 25, noise 1
    assert e["cosine"] == pytest.approx(28 / (np.sqrt(32) * 5))
    assert tensor_errors(b, b)["sqnr_db"] is None  # exact
    # a zero vector against a non-zero one has nothing in common; two zero vectors agree
    assert cosine(np.zeros((2, 3)), np.ones((2, 3))) == 0.0
    assert cosine(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0


def test_all_zero_scores_agree_with_no_class():
    ref = np.array([[0.1, 0.9, 0.0], [0.6, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert topk_agreement(ref, ref, 1) == 1.0
    assert topk_agreement(ref[:, ::-1], ref, 1) == pytest.approx(1 / 3)
    assert topk_agreement(np.zeros_like(ref), ref, 1) == 0.0  # every class ties: no prediction
    assert topk_agreement(np.zeros_like(ref), ref, 3) == 0.0


def test_mask_iou_of_probability_and_multi_class_maps():
    ref = np.zeros((1, 1, 4, 4))
    ref[0, 0, :2, :2] = 0.9  # 4 foreground pixels
    out = np.zeros_like(ref)
    out[0, 0, 0, :4] = 0.8  # 2 of them, and 2 others
    assert mask_iou(out, ref) == pytest.approx(2 / 6)
    assert mask_iou(np.zeros_like(ref), ref) == 0.0
    assert mask_iou(ref, ref) == 1.0
    logits = np.zeros((1, 3, 4, 4))  # three classes, NCHW: class 1 on the left half, class 2 on the right
    logits[0, 1, :, :2] = 5
    logits[0, 2, :, 2:] = 5
    shifted = np.roll(logits, 1, axis=3)  # each class moves one column right (wrapping round)
    # each class keeps one of its two columns, in a union of three: IoU 1/3 for both
    assert mask_iou(shifted, logits) == pytest.approx(1 / 3)
    nhwc = logits.transpose(0, 2, 3, 1)
    assert mask_iou(nhwc, nhwc) == 1.0


def test_detection_matching_known_answer():
    truth = [Boxes(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([1.0, 1.0]), np.array([0, 0]))]
    pred = [Boxes(np.array([[1, 1, 10, 10], [50, 50, 60, 60]], float), np.array([0.9, 0.8]), np.array([0, 0]))]
    d = detection_score(pred, truth)
    assert (d.precision, d.recall, d.f1) == (0.5, 0.5, 0.5)
    assert d.map50 == pytest.approx(0.5)  # the hit ranks first: precision 1 up to recall 0.5
    worse = [Boxes(pred[0].boxes, np.array([0.7, 0.8]), pred[0].classes)]  # the false one ranks first
    assert detection_score(worse, truth).map50 == pytest.approx(0.25)
    other_class = [Boxes(pred[0].boxes, pred[0].scores, np.array([1, 1]))]
    assert detection_score(other_class, truth).f1 == 0.0
    empty = [Boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))]
    assert detection_score(empty, empty).f1 == 1.0 and detection_score(empty, truth).recall == 0.0


# --- task inference -------------------------------------------------------------------------------------------


def test_task_inference_on_the_fixture_cnn_and_blazeface(tmp_path):
    cnn = Model.load(export_onnx("cnn", tmp_path / "cnn.onnx"))
    assert infer_task(cnn) == "classification"
    face = Model.load(asset("blazeface-short-range", download=False))
    spec = resolve(face)
    assert spec.task == "detection" and spec.postprocess.type == "blazeface" and spec.input_size == (128, 128)
    assert resolve(face, "tensors").task == "tensors"  # given beats inferred
    assert not resolve(face, "tensors").inferred


# --- detection on the real BlazeFace: the TFLite source against an OpenVINO fp16 variant ----------------------


def _faces_batch() -> np.ndarray:
    """Real photos letterboxed into BlazeFace's 128x128 RGB input, -1..1 as MediaPipe feeds it."""
    import cv2

    xs = []
    for photo in ("photo-astronaut", "photo-camera", "photo-coffee", "photo-chelsea"):
        frame = cv2.imread(str(asset(photo, download=False)), cv2.IMREAD_COLOR)
        s = 128 / max(frame.shape[:2])
        img = cv2.resize(frame, (round(frame.shape[1] * s), round(frame.shape[0] * s)), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((128, 128, 3), np.uint8)
        canvas[:img.shape[0], :img.shape[1]] = img
        xs.append(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0)
    return np.stack(xs)


def test_detection_metrics_on_real_blazeface(tmp_path):
    import openvino as ov

    source = Model.load(asset("blazeface-short-range", download=False))
    ov.save_model(ov.convert_model(str(source.path)), str(tmp_path / "face.xml"), compress_to_fp16=True)
    variant = Model.load(tmp_path / "face.xml")
    x = _faces_batch()
    spec = resolve(source)
    with open_session(source, "litert") as s:
        ref = align(predict(s, x), spec)
    with open_session(variant, "openvino") as s:
        out = align(predict(s, x), spec)
    a = score(spec, out, ref)
    assert a.task == "detection" and a.metric == "detection F1 at IoU 0.5"
    assert a.precision >= 0.99 and a.recall >= 0.99 and a.value == a.f1 >= 0.99 and a.map50 >= 0.99
    assert [m.output for m in a.outputs] == [o.name for o in source.outputs]  # errors per output
    assert all(m.max_abs_error < 0.5 and m.cosine > 0.999 for m in a.outputs)
    boxes = next(o.name for o in source.outputs if o.shape[-1] == 16)
    moved = {**ref, boxes: ref[boxes] + np.tile([30.0, 30.0] + [0.0] * 14, 1)}  # every box 30 px off
    off = score(spec, moved, ref)
    assert off.recall == 0.0 and off.f1 == 0.0 and off.map50 == 0.0 and off.value == 0.0


def test_unknown_task_is_a_usage_error(tmp_path):
    import subprocess
    import sys

    np.savez(tmp_path / "d.npz", x=sample("mlp", batch=4))
    proc = subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", "optimize",
                           str(export_onnx("mlp", tmp_path / "m.onnx")), "--data", str(tmp_path / "d.npz"),
                           "--task", "ranking"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--task 'ranking' is not a task" in proc.stderr and "Traceback" not in proc.stderr
