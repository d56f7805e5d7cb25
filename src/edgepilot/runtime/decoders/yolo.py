"""What the YOLO decoders share: one output of [N, box (+ objectness) + class scores] rows, read either way round."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from edgepilot.errors import ConfigError
from edgepilot.model import TensorSpec
from edgepilot.runtime.decoders.base import WRONG_TYPE, Decoder, MalformedOutput, body, describe, pick_one
from edgepilot.runtime.decoders.config import PostprocessConfig
from edgepilot.runtime.item import FrameTransform, Result


class YoloDecoder(Decoder):
    """A YOLO head: rows of box (x, y, w, h), then `lead - 4` objectness values, then the class scores."""

    lead: ClassVar[int]  # values before the class scores: box (+ objectness)
    want: ClassVar[str]  # the output it expects, for errors
    scored: ClassVar[str]  # what the values after the box are, for errors

    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        super().__init__(cfg, input_size, labels)
        self.spec = pick_one(cfg, outputs, self.want, strict=True)
        shape = body(self.spec)
        self.transposed: bool | None = self.orientation(None)
        self.expect: tuple[int, ...] | None = None
        if shape is not None:
            dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
            ok = len(dims) == 2
            if ok:
                self.transposed = self.orientation(dims)
            if ok and self.transposed is not None:
                width = dims[0] if self.transposed else dims[1]
                ok = width is None or width > self.lead
            if not ok:
                raise ConfigError(f"{self.want}; the model has {describe(outputs)}",
                                  hint="choose the postprocess.type that matches the model's head")
            if None not in dims:
                self.expect = tuple(dims)

    def orientation(self, dims: list[int | None] | None) -> bool | None:
        """True when rows are the output's columns ([lead+C, N]); None: told by each output's shape at run time.
        `dims`: the output's two static dimensions (None where dynamic), or None before they are known."""
        return False

    def class_scores(self, a: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(the rows that may still score `threshold`, their per-class scores)."""
        return a, a[:, self.lead:]

    def rows(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The output as [N, lead + C] rows: box, (objectness,) class scores."""
        a = self.array(outputs, self.spec)
        if a.ndim != 2 or (self.expect is not None and a.shape != self.expect):
            want = list(self.expect) if self.expect else f"[N, {self.lead}+C]"
            raise MalformedOutput(f"output {self.spec.name!r} has shape {list(a.shape)}; expected {want} "
                                  "(one item, no batch axis)")
        transposed = self.transposed if self.transposed is not None else a.shape[0] < a.shape[1]
        if transposed:
            a = a.T
        if a.shape[1] <= self.lead:
            raise MalformedOutput(f"output {self.spec.name!r} rows have {a.shape[1]} values; need {self.lead}+C")
        return a

    def check(self, outputs: dict[str, np.ndarray]) -> None:
        super().check(outputs)
        a, where = self.rows(outputs), f"output {self.spec.name!r}"
        self.check_labels(a.shape[1] - self.lead, where)
        self.check_scores(a[:, 4:], f"the {self.scored} of {where} [{len(a)} rows x {a.shape[1]}]")
        if len(a) and float(a[:, 2:4].min()) < 0:
            raise ConfigError(f"postprocess {self.cfg.type}: {where} has negative box sizes, so its rows are not "
                              "boxes (x, y, w, h)", hint=WRONG_TYPE)

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        a = self.rows(outputs)
        normalised = a.shape[0] > 0 and float(np.abs(a[:, :4]).max()) <= 1.5
        thr = self.cfg.score_threshold
        a, cls_scores = self.class_scores(a, thr)
        classes = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(a)), classes]
        keep = scores >= thr
        xywh, scores, classes = a[keep, :4], scores[keep], classes[keep]
        if normalised:
            xywh = xywh * np.asarray([self.input_w, self.input_h, self.input_w, self.input_h], np.float32)
        half = xywh[:, 2:] / 2
        boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
        return self.finish(boxes, scores, classes, None, transform)
