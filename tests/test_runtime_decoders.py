"""Post-processing: NMS, the YOLO/SSD/classification decoders, BlazeFace on real photos, and bad outputs."""
from __future__ import annotations

import json
import logging
import threading
from typing import get_args

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edgepilot.assets import asset
from edgepilot.engines import open_session
from edgepilot.errors import ConfigError
from edgepilot.model import Model, TensorSpec
from edgepilot.runtime.decoders import (
    DECODERS,
    PostprocessConfig,
    blazeface_preset,
    build_postprocessor,
    nms,
    ssd_anchors,
    weighted_nms,
)
from edgepilot.runtime.item import FrameTransform, Item

# Decided by looking at astronaut.png (512x512): the skin of the face, from the hairline (y ~78) to the chin
# (y ~176), cheek to cheek (x ~180 to ~274). The eyes are at about (202, 100) and (248, 103).
ASTRONAUT_FACE = (180.0, 78.0, 274.0, 176.0)
# camera.png (512x512): the cameraman's face in partial profile, ear to nose tip, hairline to chin.
CAMERAMAN_FACE = (182.0, 125.0, 255.0, 197.0)

# A 640x480 frame letterboxed into 320x320: scale 0.5, the 240 rows centred with 40 rows of padding above.
LETTERBOX = FrameTransform(scale_x=0.5, scale_y=0.5, pad_x=0, pad_y=40, frame_w=640, frame_h=480,
                           input_w=320, input_h=320)


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def item(outputs, transform=None) -> Item:
    return Item(source="test", seq=0, ts=0.0, outputs=outputs, transform=transform)


def spec(name: str, *shape) -> TensorSpec:
    return TensorSpec(name, "float32", tuple(shape))


# --- NMS --------------------------------------------------------------------------------------------------------

def test_every_postprocess_type_has_one_registered_decoder_module():
    """The config's choices are the registry's, and each decoder lives in its own module of the package."""
    assert set(get_args(PostprocessConfig.model_fields["type"].annotation)) == set(DECODERS)
    modules = {name: d.__module__ for name, d in DECODERS.items()}
    assert all(m.startswith("edgepilot.runtime.decoders.") for m in modules.values()), modules
    assert len(set(modules.values())) == len(modules), modules


def test_nms_keeps_the_higher_of_an_overlapping_pair_and_every_disjoint_box():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [100, 0, 110, 10]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.7])
    assert nms(boxes, scores, 0.5, 100).tolist() == [1, 3, 2]  # best first; box 0 overlaps box 1 (IoU 0.68)
    assert nms(boxes, scores, 0.7, 100).tolist() == [1, 3, 0, 2]  # 0.68 is below this threshold: both stay
    assert nms(boxes, scores, 0.5, 2).tolist() == [1, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5, 10).tolist() == []


def test_nms_by_class_keeps_overlapping_boxes_of_different_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5, 100, classes=np.array([0, 1, 0])).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5, 100).tolist() == [0]


def test_weighted_nms_averages_each_cluster_by_score():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [100, 100, 110, 110]], np.float32)
    kps = np.array([[[5, 5]], [[7, 5]], [[105, 105]]], np.float32)
    heads, merged, merged_kps = weighted_nms(boxes, np.array([0.75, 0.25, 0.5]), 0.3, 10, keypoints=kps)
    assert heads.tolist() == [0, 2]
    np.testing.assert_allclose(merged, [[0.5, 0, 10.5, 10], [100, 100, 110, 110]])
    np.testing.assert_allclose(merged_kps, [[[5.5, 5]], [[105, 105]]])


# --- YOLO -------------------------------------------------------------------------------------------------------

def yolo_rows() -> np.ndarray:
    """[N, 5+2] rows in 320x320 input pixels: cx, cy, w, h, objectness, class 0, class 1."""
    return np.array([
        [100, 115, 100, 50, 0.9, 0.1, 0.95],   # frame (100, 100, 300, 200), class 1, score 0.855
        [102, 116, 100, 50, 0.8, 0.1, 0.90],   # almost the same box, lower score: suppressed
        [225, 215, 50, 50, 0.7, 0.9, 0.20],    # frame (400, 300, 500, 400), class 0, score 0.63
        [60, 60, 20, 20, 0.3, 0.9, 0.90],      # objectness too low
        [0, 0, 0, 0, 0, 0, 0],                 # padding
    ], np.float32)


@pytest.mark.parametrize("normalised", [False, True])
def test_yolov5_boxes_come_back_in_frame_pixels_through_the_letterbox(normalised):
    rows = yolo_rows()
    if normalised:
        rows[:, :4] /= 320
    pp = build_postprocessor(PostprocessConfig(type="yolov5", labels=["cat", "dog"]), [spec("output0", 1, 5, 7)],
                             (320, 320))
    it = pp.process(item({"output0": rows}, LETTERBOX))
    assert it.error is None
    dets = it.result.detections
    assert [(d.label, d.class_id) for d in dets] == [("dog", 1), ("cat", 0)]
    np.testing.assert_allclose([d.box for d in dets], [[100, 100, 300, 200], [400, 300, 500, 400]], atol=1e-3)
    np.testing.assert_allclose([d.score for d in dets], [0.855, 0.63], atol=1e-6)
    assert json.loads(it.to_json())["result"]["detections"][0]["box"] == [100.0, 100.0, 300.0, 200.0]


def yolov8_rows() -> np.ndarray:
    """[N, 4+3] rows (no objectness), N = 8 > 4+C so the orientation reads off the shape."""
    rows = np.zeros((8, 7), np.float32)
    rows[0] = [100, 115, 100, 50, 0.1, 0.8, 0.0]   # frame (100, 100, 300, 200), class 1
    rows[1] = [101, 115, 100, 50, 0.0, 0.0, 0.7]   # the same place, class 2
    rows[2] = [225, 215, 50, 50, 0.6, 0.0, 0.0]    # frame (400, 300, 500, 400), class 0
    rows[3] = [225, 215, 50, 50, 0.4, 0.0, 0.0]    # below the threshold
    return rows


@pytest.mark.parametrize("transposed", [True, False])
def test_yolov8_reads_either_orientation(transposed):
    rows = yolov8_rows()
    out = rows.T.copy() if transposed else rows
    pp = build_postprocessor(PostprocessConfig(type="yolov8"), [spec("output0", 1, *out.shape)], (320, 320))
    dets = pp.process(item({"output0": out}, LETTERBOX)).result.detections
    assert [(d.label, round(d.score, 3)) for d in dets] == [("class1", 0.8), ("class2", 0.7), ("class0", 0.6)]
    np.testing.assert_allclose(dets[0].box, [100, 100, 300, 200], atol=1e-3)
    np.testing.assert_allclose(dets[1].box, [102, 100, 302, 200], atol=1e-3)
    np.testing.assert_allclose(dets[2].box, [400, 300, 500, 400], atol=1e-3)


def test_yolov8_dynamic_shape_and_class_agnostic_nms_without_a_transform():
    pp = build_postprocessor(PostprocessConfig(type="yolov8", class_aware=False, max_detections=5),
                             [spec("out", "batch", 7, "anchors")], (320, 320))
    dets = pp.process(item({"out": yolov8_rows().T.copy()})).result.detections
    assert [d.class_id for d in dets] == [1, 0]  # class 2 overlaps class 1 and goes once NMS ignores classes
    np.testing.assert_allclose(dets[0].box, [50, 90, 150, 140], atol=1e-3)  # model-input pixels


# --- classification ---------------------------------------------------------------------------------------------

def test_classification_top_k_applies_softmax_to_logits_only():
    pp = build_postprocessor(PostprocessConfig(type="classification", top_k=2, labels=["a", "b", "c", "d"]),
                             [spec("probs", 1, 4)], (224, 224))
    logits = np.array([1.0, 3.0, 0.0, 2.0], np.float32)
    res = pp.process(item({"probs": logits})).result
    e = np.exp(logits - 3)
    assert [(i, lab) for i, lab, _ in res.classes] == [(1, "b"), (3, "d")]
    np.testing.assert_allclose([s for *_, s in res.classes], [e[1] / e.sum(), e[3] / e.sum()], rtol=1e-5)
    probs = np.array([0.1, 0.2, 0.6, 0.1], np.float32)
    assert pp.process(item({"probs": probs})).result.classes[0] == (2, "c", pytest.approx(0.6))
    always = build_postprocessor(PostprocessConfig(type="classification", softmax="always"), [spec("p", 1, 4)],
                                 (224, 224))
    assert always.process(item({"p": probs})).result.classes[0][2] == pytest.approx(np.exp(0.6) / np.exp(probs).sum())


def test_classification_labels_file_and_k_beyond_the_class_count(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("tench\ngoldfish\nshark\n\n", encoding="utf-8")
    cfg = PostprocessConfig(type="classification", labels_file=str(path), top_k=10, softmax="never")
    pp = build_postprocessor(cfg, [spec("logits", 1, 1, 1, 3)], (224, 224))
    res = pp.process(item({"logits": np.array([[[0.2, 0.7, 0.1]]], np.float32)})).result
    assert [lab for _, lab, _ in res.classes] == ["goldfish", "tench", "shark"]
    with pytest.raises(ConfigError, match="labels_file"):
        build_postprocessor(cfg.model_copy(update={"labels_file": str(tmp_path / "none.txt")}),
                            [spec("logits", 1, 3)], (224, 224))
    with pytest.raises(ValidationError, match="not both"):
        PostprocessConfig(type="classification", labels=["a"], labels_file=str(path))


# --- SSD anchors and decoding -----------------------------------------------------------------------------------

def anchors_for(w: int, h: int) -> np.ndarray:
    p = blazeface_preset(w, h)
    return ssd_anchors(w, h, strides=p["strides"], num_layers=p["num_layers"], min_scale=p["min_scale"],
                       interpolated_scale_aspect_ratio=p["interpolated_scale_aspect_ratio"])


@pytest.mark.parametrize("size", [128, 256])
def test_blazeface_anchors_128_and_256(size):
    a = anchors_for(size, size)
    assert a.shape == (896, 4)
    # 16x16 cells x 2 anchors, then 8x8 cells x 6 anchors; the same normalised grid at both sizes
    np.testing.assert_allclose(a[0], [1 / 32, 1 / 32, 1, 1])
    np.testing.assert_allclose(a[1], a[0])
    np.testing.assert_allclose(a[2, :2], [3 / 32, 1 / 32])
    np.testing.assert_allclose(a[511, :2], [31 / 32, 31 / 32])
    np.testing.assert_allclose(a[512, :2], [1 / 16, 1 / 16])
    np.testing.assert_allclose(a[-1], [15 / 16, 15 / 16, 1, 1])
    assert (a[:, 2:] == 1).all()


def test_full_range_preset_and_mediapipe_object_detection_anchors():
    full = anchors_for(192, 192)
    assert full.shape == (2304, 4)
    np.testing.assert_allclose(full[[0, -1], :2], [[1 / 96, 1 / 96], [95 / 96, 95 / 96]], rtol=1e-6)
    # MediaPipe's SSD MobileNet graph: 6 layers, 3 reduced boxes in the first, 5 ratios + 1 interpolated elsewhere
    a = ssd_anchors(300, 300, strides=[16, 32, 64, 128, 256, 512], min_scale=0.2, max_scale=0.95,
                    aspect_ratios=[1.0, 2.0, 0.5, 3.0, 0.3333], reduce_boxes_in_lowest_layer=True,
                    fixed_anchor_size=False)
    assert a.shape == (1917, 4)  # 19*19*3 + 10*10*6 + 5*5*6 + 3*3*6 + 2*2*6 + 1*6
    r = np.sqrt(2)
    np.testing.assert_allclose(a[:3], [[0.5 / 19, 0.5 / 19, 0.1, 0.1], [0.5 / 19, 0.5 / 19, 0.2 * r, 0.2 / r],
                                       [0.5 / 19, 0.5 / 19, 0.2 / r, 0.2 * r]], rtol=1e-5)
    with pytest.raises(ConfigError, match="no preset"):
        blazeface_preset(320, 320)


def blazeface_outputs(order: str = "xywh") -> dict[str, np.ndarray]:
    """Two hand-made detections on anchor 674 (the 8x8 layer's cell (3, 3): centre (56, 56) in 128x128 pixels)."""
    reg = np.zeros((896, 16), np.float32)
    cls = np.full((896, 1), -20.0, np.float32)
    reg[674, :4] = [4, -6, 30, 40]           # centre (60, 50), 30x40: box (45, 30, 75, 70)
    reg[674, 4:8] = [-10, -5, 10, -5]        # eyes at (46, 51) and (66, 51)
    reg[675, :4] = [8, -6, 30, 40]           # the same face 4 px to the right
    reg[675, 4:8] = [-6, -5, 14, -5]
    cls[674], cls[675] = 2.0, 1.0            # sigmoid: 0.881, 0.731
    if order == "yxhw":
        reg = reg.reshape(896, 8, 2)[..., ::-1].reshape(896, 16).copy()
    return {"regressors": reg, "classificators": cls}


BLAZEFACE_OUTPUTS = [spec("regressors", 1, 896, 16), spec("classificators", 1, 896, 1)]


def test_blazeface_decoding_with_weighted_nms_and_a_frame_transform():
    pp = build_postprocessor(PostprocessConfig(type="blazeface"), BLAZEFACE_OUTPUTS, (128, 128))
    quad = FrameTransform(0.25, 0.25, 0, 0, 512, 512, 128, 128)  # a 512x512 frame
    dets = pp.process(item(blazeface_outputs(), quad)).result.detections
    assert len(dets) == 1 and dets[0].label == "face" and dets[0].class_id == 0
    s1, s2 = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-1.0))
    dx = 4 * s2 / (s1 + s2)  # the weighted mean moves the box towards the weaker twin
    assert dets[0].score == pytest.approx(s1, rel=1e-6)
    np.testing.assert_allclose(dets[0].box, np.array([45 + dx, 30, 75 + dx, 70]) * 4, rtol=1e-5)
    assert len(dets[0].keypoints) == 6
    np.testing.assert_allclose(dets[0].keypoints[:2], np.array([[46 + dx, 51], [66 + dx, 51]]) * 4, rtol=1e-5)


def test_plain_ssd_type_reads_yxhw_and_hard_nms():
    cfg = PostprocessConfig(type="ssd", strides=[8, 16, 16, 16], fixed_anchor_size=True, sigmoid_score=True)
    pp = build_postprocessor(cfg, BLAZEFACE_OUTPUTS, (128, 128))
    dets = pp.process(item(blazeface_outputs("yxhw"))).result.detections
    assert [d.label for d in dets] == ["class0"]  # hard NMS at 0.45: the twin (IoU 0.76) is dropped, not merged
    np.testing.assert_allclose(dets[0].box, [45, 30, 75, 70], atol=1e-4)
    np.testing.assert_allclose(dets[0].keypoints[:2], [[46, 51], [66, 51]], atol=1e-4)


# --- real BlazeFace ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blazeface():
    def open_(name: str):
        model = Model.load(asset(name, download=False))
        return model, open_session(model, "litert", threads=1)

    return open_


def run_on_photo(model, session, photo: str, **cfg) -> Item:
    """Letterbox the photo into the model's input as MediaPipe does (RGB, -1..1), run it, post-process it."""
    frame = cv2.imread(str(asset(photo, download=False)), cv2.IMREAD_COLOR)
    size = model.inputs[0].shape[1]
    fh, fw = frame.shape[:2]
    s = min(size / fw, size / fh)
    nw, nh = round(fw * s), round(fh * s)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[py:py + nh, px:px + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    x = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
    outputs = session.run({model.inputs[0].name: x[None]})
    pp = build_postprocessor(PostprocessConfig(type="blazeface", **cfg), model.outputs, (size, size))
    transform = FrameTransform(s, s, px, py, fw, fh, size, size)
    return pp.process(Item(source=photo, seq=0, ts=0.0, frame=frame, transform=transform,
                           outputs={k: v[0] for k, v in outputs.items()}))


@pytest.mark.parametrize("name", ["blazeface-short-range", "blazeface-back"])
def test_real_blazeface_finds_the_astronauts_face(blazeface, name):
    model, session = blazeface(name)
    it = run_on_photo(model, session, "photo-astronaut")
    assert it.error is None
    (face,) = it.result.detections
    assert face.label == "face" and face.score > 0.7
    assert iou(face.box, ASTRONAUT_FACE) >= 0.5
    right_eye, left_eye = face.keypoints[0], face.keypoints[1]  # the subject's right eye is on the image's left
    for x, y in (right_eye, left_eye):
        assert face.box[0] <= x <= face.box[2] and face.box[1] <= y <= face.box[3]
    assert right_eye[0] < left_eye[0] and abs(right_eye[1] - left_eye[1]) < 15


@pytest.mark.parametrize("photo", ["photo-coffee", "photo-brick"])
def test_real_blazeface_finds_no_face_where_there_is_none(blazeface, photo):
    model, session = blazeface("blazeface-short-range")
    it = run_on_photo(model, session, photo, score_threshold=0.5)
    assert it.error is None and it.result.detections == []


def test_real_blazeface_on_the_cameraman_in_partial_profile(blazeface):
    # Observed: one face, score ~0.79, box ~(181, 124, 268, 211); the eye keypoints drift towards the nose.
    model, session = blazeface("blazeface-short-range")
    (face,) = run_on_photo(model, session, "photo-camera").result.detections
    assert face.score > 0.6 and iou(face.box, CAMERAMAN_FACE) >= 0.5


# --- validation at build time, malformed outputs at run time ----------------------------------------------------

def test_a_decoder_that_does_not_fit_the_model_is_refused_at_build_time():
    with pytest.raises(ConfigError) as e:
        build_postprocessor(PostprocessConfig(type="yolov8"), BLAZEFACE_OUTPUTS, (128, 128))
    assert "yolov8 expects one output [1, 4+C, N] or [1, N, 4+C]" in str(e.value)
    assert "regressors [1, 896, 16], classificators [1, 896, 1]" in str(e.value)
    with pytest.raises(ConfigError, match=r"blazeface expects two outputs.*output0 \[1, 84, 8400\]"):
        build_postprocessor(PostprocessConfig(type="blazeface"), [spec("output0", 1, 84, 8400)], (128, 128))
    with pytest.raises(ConfigError, match=r"yolov5 expects one output \[1, N, 5\+C\]"):
        build_postprocessor(PostprocessConfig(type="yolov5"), [spec("output0", 1, 100, 4)], (320, 320))
    with pytest.raises(ConfigError, match="classification expects an output"):
        build_postprocessor(PostprocessConfig(type="classification"), BLAZEFACE_OUTPUTS, (128, 128))
    with pytest.raises(ConfigError, match="896 anchors but the model has 2304"):
        build_postprocessor(PostprocessConfig(type="blazeface"), [spec("r", 1, 2304, 16), spec("c", 1, 2304, 1)],
                            (128, 128))
    with pytest.raises(ConfigError, match="needs strides"):
        build_postprocessor(PostprocessConfig(type="ssd"), BLAZEFACE_OUTPUTS, (128, 128))
    with pytest.raises(ConfigError, match="'probs' is not an output"):
        build_postprocessor(PostprocessConfig(type="yolov8", output="probs"), BLAZEFACE_OUTPUTS, (128, 128))
    with pytest.raises(ValidationError):
        PostprocessConfig(type="yolov8", iou=0.5)


def test_malformed_outputs_set_item_error_and_never_raise(caplog):
    pp = build_postprocessor(PostprocessConfig(type="blazeface"), BLAZEFACE_OUTPUTS, (128, 128))
    good = blazeface_outputs()
    bad = [
        {**good, "regressors": good["regressors"][:100]},                        # wrong shape
        {**good, "classificators": np.full((896, 1), np.nan, np.float32)},       # NaN
        {"regressors": good["regressors"]},                                      # an output missing
        None,                                                                    # no outputs at all
    ]
    with caplog.at_level(logging.WARNING, logger="edgepilot.runtime.decoders"):
        results = [pp.process(item(o)) for o in bad]
    for it in results:
        assert it.error and it.error.startswith("postprocess:")
        assert it.result is not None and it.result.kind == "detection" and it.result.detections == []
    assert "896" in results[0].error and "NaN" in results[1].error and "classificators" in results[2].error
    assert pp.failures == 3 and "postprocess skipped" in caplog.text
    yolo = build_postprocessor(PostprocessConfig(type="yolov8"), [spec("output0", 1, 7, 8)], (320, 320))
    it = yolo.process(item({"output0": yolov8_rows().T[None]}))  # the batch axis left on
    assert "(one item, no batch axis)" in it.error and it.result.detections == []


def test_raw_passes_outputs_through_and_one_postprocessor_serves_many_threads():
    raw = build_postprocessor(PostprocessConfig(type="raw"), [spec("y", 1, 3)], (8, 8))
    res = raw.process(item({"y": np.array([1.0, 2.0, 3.0])})).result
    assert res.kind == "raw" and res.to_dict()["raw"] == {"y": [1.0, 2.0, 3.0]}

    pp = build_postprocessor(PostprocessConfig(type="blazeface"), BLAZEFACE_OUTPUTS, (128, 128))
    expected = pp.process(item(blazeface_outputs())).result.detections
    got: list = []

    def work():
        for _ in range(20):
            got.append(pp.process(item(blazeface_outputs())).result.detections)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 80 and all(d == expected for d in got)
