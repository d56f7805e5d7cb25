"""What flows through the edge runtime: an Item from a source, its Result after post-processing, Events from rules."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FrameTransform:
    """How model-input pixels map back to the original frame: frame_x = (input_x - pad_x) / scale_x.

    Covers stretch (pad 0, scale_x != scale_y) and letterbox (one scale, centred padding) resizes."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    frame_w: int
    frame_h: int
    input_w: int
    input_h: int

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """[N, 4] x1, y1, x2, y2 in model-input pixels -> frame pixels, clipped to the frame."""
        b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        b[:, 0::2] = (b[:, 0::2] - self.pad_x) / self.scale_x
        b[:, 1::2] = (b[:, 1::2] - self.pad_y) / self.scale_y
        b[:, 0::2] = b[:, 0::2].clip(0, self.frame_w)
        b[:, 1::2] = b[:, 1::2].clip(0, self.frame_h)
        return b

    def points_to_frame(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] x, y in model-input pixels -> frame pixels (not clipped: a keypoint may lie outside)."""
        p = np.asarray(points, np.float32).copy()
        p[..., 0] = (p[..., 0] - self.pad_x) / self.scale_x
        p[..., 1] = (p[..., 1] - self.pad_y) / self.scale_y
        return p


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-frame pixels
    score: float
    class_id: int
    label: str
    keypoints: tuple[tuple[float, float], ...] = ()  # frame pixels (BlazeFace: eyes, nose, mouth, ears)


@dataclass
class Result:
    kind: str  # "classification" | "detection" | "raw"
    classes: list[tuple[int, str, float]] = field(default_factory=list)  # top-k: class id, label, score
    detections: list[Detection] = field(default_factory=list)
    raw: dict[str, np.ndarray] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "classification":
            out["classes"] = [{"id": i, "label": lab, "score": round(float(s), 6)} for i, lab, s in self.classes]
        elif self.kind == "detection":
            out["detections"] = [{"box": [round(float(v), 2) for v in d.box], "score": round(float(d.score), 6),
                                  "class_id": d.class_id, "label": d.label,
                                  **({"keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in d.keypoints]}
                                     if d.keypoints else {})}
                                 for d in self.detections]
        elif self.raw is not None:
            out["raw"] = {k: np.asarray(v).tolist() for k, v in self.raw.items()}
        return out


@dataclass
class Event:
    """What a rule emits. `kind` "event" is a one-off; "alert" carries state "raised" or "cleared".
    `mqtt_topics` and `webhooks` are the rule's extra destinations besides the pipeline's event sinks."""

    rule: str
    source: str
    seq: int
    kind: str = "event"
    state: str | None = None
    severity: str = "info"
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    mqtt_topics: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()
    ts: float = field(default_factory=time.time)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("mqtt_topics"), d.pop("webhooks")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=_jsonable)


@dataclass(eq=False)  # identity: items hold arrays, and two frames are never "the same item"
class Item:
    """One unit of work: a frame or a set of sensor readings, and everything the stages add to it."""

    source: str
    seq: int  # per source, from 0
    ts: float  # epoch seconds at capture
    frame: np.ndarray | None = None  # H x W x 3 uint8, BGR (OpenCV's order)
    values: dict[str, float] | None = None  # sensor readings by name
    live: bool = False  # a live source drops its oldest items under load; a file source waits instead
    meta: dict[str, Any] = field(default_factory=dict)  # path, topic, quality flags ...
    tensor: np.ndarray | dict[str, np.ndarray] | None = None  # model input(s) for this item, without the batch axis
    transform: FrameTransform | None = None
    outputs: dict[str, np.ndarray] | None = None  # this item's slice of the model outputs
    whole_outputs: bool = False  # the outputs are the model's own (no batch axis to slice them by)
    result: Result | None = None
    events: list[Event] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    error: str | None = None
    release: Any = field(default=None, repr=False)  # gives the item's shared-memory slot back (decode: process)

    def done(self) -> None:
        """The pipeline is finished with this item (delivered, dropped or skipped); idempotent."""
        release, self.release = self.release, None
        if release is not None:
            release()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form sinks write: no pixels, no tensors."""
        out: dict[str, Any] = {"source": self.source, "seq": self.seq, "ts": round(self.ts, 6)}
        if self.values is not None:
            out["values"] = self.values
        if self.result is not None:
            out["result"] = self.result.to_dict()
        if self.events:
            out["events"] = [e.to_dict() for e in self.events]
        meta = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
        if meta:
            out["meta"] = meta
        if self.error:
            out["error"] = self.error
        out["timings_ms"] = {k: round(v * 1e3, 3) for k, v in self.timings.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=_jsonable)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
