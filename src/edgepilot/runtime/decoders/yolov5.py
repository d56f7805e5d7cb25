"""The YOLOv5 decoder: rows [N, 5+C] of box, objectness and class scores; a class's score is objectness x class."""
from __future__ import annotations

import numpy as np

from edgepilot.runtime.decoders.yolo import YoloDecoder


class Yolov5Decoder(YoloDecoder):
    name = "yolov5"
    lead = 5
    want = "yolov5 expects one output [1, N, 5+C]"
    scored = "objectness and class scores"

    def class_scores(self, a: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        a = a[a[:, 4] >= threshold]  # class scores are <= 1, so the score cannot exceed the objectness
        return a, a[:, 5:] * a[:, 4:5]
