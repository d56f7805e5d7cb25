"""The YOLOv8 decoder: box and class scores (no objectness), as [4+C, N] (as exported) or [N, 4+C]."""
from __future__ import annotations

from edgepilot.runtime.decoders.yolo import YoloDecoder


class Yolov8Decoder(YoloDecoder):
    name = "yolov8"
    lead = 4
    want = "yolov8 expects one output [1, 4+C, N] or [1, N, 4+C]"
    scored = "class scores"

    def orientation(self, dims: list[int | None] | None) -> bool | None:
        if dims is None or None in dims:
            return None  # either way round: the longer axis is the boxes'
        return dims[0] < dims[1]
