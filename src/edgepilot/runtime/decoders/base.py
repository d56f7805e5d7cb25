"""What every decoder shares: the Decoder base class, output reading and checks, and the Postprocessor stage."""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepilot.engines.base import dequantize
from edgepilot.errors import ConfigError
from edgepilot.model import TensorSpec
from edgepilot.runtime.decoders.config import PostprocessConfig
from edgepilot.runtime.decoders.nms import nms, weighted_nms
from edgepilot.runtime.item import Detection, FrameTransform, Item, Result

log = logging.getLogger(__name__)

_SCORE_SLACK = 1e-3  # fp16 and int8 outputs round a little past 0 and 1
WRONG_TYPE = "check that postprocess.type (and postprocess.output) match the model's head"


class MalformedOutput(ValueError):
    """An output that does not fit its decoder at run time."""


def describe(outputs: list[TensorSpec]) -> str:
    return ", ".join(f"{o.name} {o.shape_str()}" for o in outputs) or "no outputs"


def read_labels(cfg: PostprocessConfig) -> list[str] | None:
    if cfg.labels is not None:
        return list(cfg.labels)
    if cfg.labels_file is None:
        return None
    path = Path(cfg.labels_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"postprocess.labels_file {path}: cannot read it ({e.strerror})",
                          hint="give a text file with one label per line") from e
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def pick_one(cfg: PostprocessConfig, outputs: list[TensorSpec], what: str, strict: bool) -> TensorSpec:
    """The output a single-output decoder reads: postprocess.output, else the only (or, not `strict`, the first)."""
    if cfg.output is not None:
        for o in outputs:
            if o.name == cfg.output:
                return o
        raise ConfigError(f"postprocess.output {cfg.output!r} is not an output of the model ({describe(outputs)})")
    if not outputs or (strict and len(outputs) != 1):
        raise ConfigError(f"{what}; the model has {describe(outputs)}",
                          hint="set postprocess.output to the one to read, or choose another postprocess.type")
    return outputs[0]


def body(spec: TensorSpec) -> tuple[Any, ...] | None:
    """The shape without the batch axis."""
    return None if spec.shape is None else tuple(spec.shape[1:])


class Decoder(ABC):
    """One model head's outputs to a Result. Built once per model (shape checks there), then stateless per item."""

    name: ClassVar[str]  # the postprocess.type that selects it
    kind: ClassVar[str] = "detection"  # the Result kind it makes

    def __init__(self, cfg: PostprocessConfig, input_size: tuple[int, int], labels: list[str] | None) -> None:
        self.cfg, self.labels = cfg, labels
        self.input_w, self.input_h = int(input_size[0]), int(input_size[1])
        self.nms_kind = cfg.nms or "hard"
        self.iou_threshold = cfg.iou_threshold

    def label(self, class_id: int) -> str:
        if self.labels is not None and 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return f"class{class_id}"

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        """This item's outputs (no batch axis) to a Result, boxes in frame pixels when `transform` is given."""

    def check(self, outputs: dict[str, np.ndarray]) -> None:
        """Raises ConfigError when real outputs (no batch axis) are not what this decoder reads: run once at start,
        so a wrong decoder is refused instead of publishing garbage. The decoders add their own checks."""
        try:
            self.decode(outputs, None)
        except MalformedOutput as e:
            raise ConfigError(f"postprocess {self.cfg.type}: {e}", hint=WRONG_TYPE) from None

    def check_labels(self, classes: int, where: str) -> None:
        if self.labels is not None and len(self.labels) != classes:
            raise ConfigError(f"postprocess {self.cfg.type}: {where} holds {classes} class(es) but "
                              f"{len(self.labels)} label(s) are given", hint=f"give one label per class; {WRONG_TYPE}")

    def check_scores(self, scores: np.ndarray, where: str, hint: str = WRONG_TYPE) -> None:
        """Scores after the decoder's activation must be probabilities."""
        lo, hi = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 0.0)
        if lo < -_SCORE_SLACK or hi > 1 + _SCORE_SLACK:
            raise ConfigError(f"postprocess {self.cfg.type}: {where} should be scores in [0, 1] but range from "
                              f"{lo:.4g} to {hi:.4g}", hint=hint)

    @staticmethod
    def array(outputs: dict[str, np.ndarray], spec: TensorSpec) -> np.ndarray:
        if spec.name not in outputs:
            raise MalformedOutput(f"output {spec.name!r} is missing (got {', '.join(outputs) or 'none'})")
        a = np.asarray(outputs[spec.name])
        if a.dtype.kind in "iu" and spec.quantization is not None:  # a session asked not to dequantise
            a = dequantize(a[None], spec)[0]  # the batch axis back, so a per-channel axis lines up
        if a.dtype.kind not in "fiub":
            raise MalformedOutput(f"output {spec.name!r} is {a.dtype}, not numbers")
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a).all():
            raise MalformedOutput(f"output {spec.name!r} holds NaN or infinite values")
        return a

    def finish(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, keypoints: np.ndarray | None,
               transform: FrameTransform | None) -> Result:
        """NMS, then model-input pixels -> frame pixels, then Detections."""
        cls = classes if self.cfg.class_aware else None
        if self.nms_kind == "weighted":
            keep, boxes, keypoints = weighted_nms(boxes, scores, self.iou_threshold, self.cfg.max_detections,
                                                  cls, keypoints)
        else:
            keep = nms(boxes, scores, self.iou_threshold, self.cfg.max_detections, cls)
            boxes = np.asarray(boxes).reshape(-1, 4)[keep]
            keypoints = keypoints[keep] if keypoints is not None else None
        scores, classes = scores[keep], classes[keep]
        if transform is not None:
            boxes = transform.to_frame(boxes)
            keypoints = transform.points_to_frame(keypoints) if keypoints is not None else None
        else:
            boxes = np.asarray(boxes, np.float32).copy()
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, self.input_w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, self.input_h)
        dets = []
        for j in range(len(keep)):
            x1, y1, x2, y2 = (float(v) for v in boxes[j])
            if x2 <= x1 or y2 <= y1:  # wholly in the letterbox padding or outside the frame
                continue
            kps = tuple((float(x), float(y)) for x, y in keypoints[j]) if keypoints is not None else ()
            dets.append(Detection((x1, y1, x2, y2), float(scores[j]), int(classes[j]), self.label(int(classes[j])),
                                  kps))
        return Result(kind="detection", detections=dets)


class Postprocessor:
    """`process(item)` sets item.result from item.outputs (one item, no batch axis). Stateless per item, so one
    instance serves every worker thread; a malformed output gives item.error and an empty result, never a raise."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.kind = decoder.kind
        self.failures = 0  # items whose outputs could not be decoded
        self._lock = threading.Lock()

    def process(self, item: Item) -> Item:
        if item.outputs is None:
            item.error = item.error or "postprocess: the item has no model outputs"
            item.result = Result(kind=self.kind)
            return item
        try:
            item.result = self.decoder.decode(item.outputs, item.transform)
        except MalformedOutput as e:
            self._fail(item, str(e))
        except Exception as e:  # a decoder bug must not stop a long-running pipeline either
            log.exception("postprocess failed on %s #%d", item.source, item.seq)
            self._fail(item, f"{type(e).__name__}: {e}")
        return item

    def check(self, outputs: dict[str, np.ndarray]) -> None:
        """ConfigError when one item's real outputs (no batch axis) do not fit the decoder."""
        self.decoder.check(outputs)

    def _fail(self, item: Item, why: str) -> None:
        with self._lock:
            self.failures += 1
        log.warning("postprocess skipped %s #%d: %s", item.source, item.seq, why)
        item.error = f"postprocess: {why}"
        item.result = Result(kind=self.kind)
