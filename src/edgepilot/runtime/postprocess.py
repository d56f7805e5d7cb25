"""Post-processing: one item's raw model outputs to a Result (top-k classes, detections after NMS, or raw tensors)."""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgepilot.engines.base import dequantize
from edgepilot.errors import ConfigError
from edgepilot.model import TensorSpec
from edgepilot.runtime.anchors import (
    SSD_DEFAULTS,
    MalformedOutput,
    SsdHead,
    SsdOptions,
    blazeface_preset,
    match_ssd_outputs,
)
from edgepilot.runtime.item import Detection, FrameTransform, Item, Result

log = logging.getLogger(__name__)


class PostprocessConfig(SsdOptions):
    """How a model's outputs become a Result. The SSD anchor and decoding fields come from SsdOptions."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["classification", "yolov5", "yolov8", "ssd", "blazeface", "raw"] = Field(
        ..., description="how to read the outputs; blazeface is an ssd preset derived from the input size")
    labels: list[str] | None = Field(None, description="class names by id; detections default to class<N>")
    labels_file: str | None = Field(None, description="a text file with one label per line (instead of labels)")
    output: str | None = Field(None, description="the output to read (classification, yolo, raw) when there are "
                                                 "several")
    top_k: int = Field(5, ge=1, description="classification: how many classes to report")
    softmax: Literal["auto", "always", "never"] = Field(
        "auto", description="classification: auto applies softmax unless the outputs already are probabilities")
    score_threshold: float = Field(0.5, ge=0, le=1, description="detections scoring lower are dropped")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="NMS overlap above which the lower score goes "
                                                                "(blazeface: 0.3 unless set)")
    max_detections: int = Field(100, ge=1, description="at most this many detections per item")
    class_aware: bool = Field(True, description="NMS per class: boxes of different classes never suppress each other")
    nms: Literal["hard", "weighted"] | None = Field(
        None, description="hard: greedy NMS; weighted: each kept box is the score-weighted mean of its cluster, as "
                          "MediaPipe does. Default: weighted for blazeface, hard otherwise")

    @model_validator(mode="after")
    def _check(self) -> PostprocessConfig:
        if self.labels is not None and self.labels_file is not None:
            raise ValueError("give labels or labels_file, not both")
        if self.num_layers is not None and self.strides is not None and self.num_layers != len(self.strides):
            raise ValueError(f"num_layers is {self.num_layers} but {len(self.strides)} strides are given")
        return self


def _iou_one(box: np.ndarray, boxes: np.ndarray, area: float, areas: np.ndarray) -> np.ndarray:
    w = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    h = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    inter = w * h
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _offset_by_class(boxes: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """Shift each class to its own region so that boxes of different classes never overlap."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if classes is None or len(b) == 0:
        return b
    span = float(b.max() - b.min()) + 1.0
    return b + np.asarray(classes, np.float64).reshape(-1, 1) * span


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45, max_detections: int = 100,
        classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS, highest score first: indices of the kept boxes ([N, 4] x1, y1, x2, y2), best first.

    With `classes`, boxes only suppress boxes of their own class."""
    b = _offset_by_class(boxes, classes)
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"nms: {len(b)} boxes but {len(s)} scores")
    areas = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    order = np.argsort(-s, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        order = rest[_iou_one(b[i], b[rest], areas[i], areas[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_detections: int,
                 classes: np.ndarray | None = None, keypoints: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MediaPipe's weighted NMS: (head indices, score-weighted mean box per cluster, mean keypoints per cluster).

    A cluster is the best remaining box and every box overlapping it by more than `iou_threshold`."""
    raw = np.asarray(boxes, np.float64).reshape(-1, 4)
    b = _offset_by_class(raw, classes)
    s = np.asarray(scores, np.float64).reshape(-1)
    areas = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    order = np.argsort(-s, kind="stable")
    heads, out_boxes, out_kps = [], [], []
    while order.size and len(heads) < max_detections:
        i = order[0]
        member = _iou_one(b[i], b[order], areas[i], areas[order]) > iou_threshold
        member[0] = True  # a degenerate box still forms its own cluster
        idx = order[member]
        w = s[idx] / s[idx].sum() if s[idx].sum() > 0 else np.full(len(idx), 1 / len(idx))
        heads.append(int(i))
        out_boxes.append((raw[idx] * w[:, None]).sum(0))
        if keypoints is not None:
            out_kps.append((np.asarray(keypoints, np.float64)[idx] * w[:, None, None]).sum(0))
        order = order[~member]
    kps = np.asarray(out_kps) if keypoints is not None and out_kps else None
    return np.asarray(heads, np.int64), np.asarray(out_boxes).reshape(-1, 4), kps


_SCORE_SLACK = 1e-3  # fp16 and int8 outputs round a little past 0 and 1
_WRONG_TYPE = "check that postprocess.type (and postprocess.output) match the model's head"


def _describe(outputs: list[TensorSpec]) -> str:
    return ", ".join(f"{o.name} {o.shape_str()}" for o in outputs) or "no outputs"


def _read_labels(cfg: PostprocessConfig) -> list[str] | None:
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


class _Decoder(ABC):
    kind = "detection"

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
            raise ConfigError(f"postprocess {self.cfg.type}: {e}", hint=_WRONG_TYPE) from None

    def check_labels(self, classes: int, where: str) -> None:
        if self.labels is not None and len(self.labels) != classes:
            raise ConfigError(f"postprocess {self.cfg.type}: {where} holds {classes} class(es) but "
                              f"{len(self.labels)} label(s) are given", hint=f"give one label per class; {_WRONG_TYPE}")

    def check_scores(self, scores: np.ndarray, where: str, hint: str = _WRONG_TYPE) -> None:
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


def _pick_one(cfg: PostprocessConfig, outputs: list[TensorSpec], what: str, strict: bool) -> TensorSpec:
    if cfg.output is not None:
        for o in outputs:
            if o.name == cfg.output:
                return o
        raise ConfigError(f"postprocess.output {cfg.output!r} is not an output of the model ({_describe(outputs)})")
    if not outputs or (strict and len(outputs) != 1):
        raise ConfigError(f"{what}; the model has {_describe(outputs)}",
                          hint="set postprocess.output to the one to read, or choose another postprocess.type")
    return outputs[0]


def _body(spec: TensorSpec) -> tuple[Any, ...] | None:
    """The shape without the batch axis."""
    return None if spec.shape is None else tuple(spec.shape[1:])


class _Classify(_Decoder):
    kind = "classification"

    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        super().__init__(cfg, input_size, labels)
        want = "classification expects an output [1, C]"
        self.spec = _pick_one(cfg, outputs, want, strict=False)
        body = _body(self.spec)
        self.classes: int | None = None
        if body is not None:
            if len(body) == 0 or sum(1 for d in body if d != 1) > 1:
                raise ConfigError(f"{want}; the model has {_describe(outputs)}",
                                  hint="choose another postprocess.type, or postprocess.output")
            if all(isinstance(d, int) and d > 0 for d in body):
                self.classes = int(np.prod(body))

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        x = self.array(outputs, self.spec).reshape(-1)
        if x.size == 0 or (self.classes is not None and x.size != self.classes):
            raise MalformedOutput(f"output {self.spec.name!r} has {x.size} values; expected {self.classes}")
        p = self.probabilities(x)
        k = min(self.cfg.top_k, p.size)
        top = np.argpartition(-p, k - 1)[:k]
        top = top[np.argsort(-p[top], kind="stable")]
        return Result(kind="classification", classes=[(int(i), self.label(int(i)), float(p[i])) for i in top])

    def check(self, outputs: dict[str, np.ndarray]) -> None:
        super().check(outputs)
        x = self.array(outputs, self.spec).reshape(-1)
        self.check_labels(x.size, f"output {self.spec.name!r}")
        if self.cfg.softmax == "never":
            self.check_scores(x, f"output {self.spec.name!r}", hint="set postprocess.softmax to auto: the outputs "
                                                                     "are logits")

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        mode = self.cfg.softmax
        if x.size == 1:  # a one-unit head is a sigmoid score: softmax would always say 1
            return x if mode == "never" or 0 <= x[0] <= 1 else 1 / (1 + np.exp(-x))
        if mode == "never" or (mode == "auto" and x.min() >= -1e-6 and abs(float(x.sum()) - 1) <= 1e-2):
            return x
        e = np.exp(x - x.max())
        return e / e.sum()


class _Yolo(_Decoder):
    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        super().__init__(cfg, input_size, labels)
        self.v5 = cfg.type == "yolov5"
        self.lead = 5 if self.v5 else 4  # values before the class scores: box (+ objectness)
        want = ("yolov5 expects one output [1, N, 5+C]" if self.v5
                else "yolov8 expects one output [1, 4+C, N] or [1, N, 4+C]")
        self.spec = _pick_one(cfg, outputs, want, strict=True)
        body = _body(self.spec)
        self.transposed: bool | None = False if self.v5 else None
        self.expect: tuple[int, ...] | None = None
        if body is not None:
            dims = [d if isinstance(d, int) and d > 0 else None for d in body]
            ok = len(dims) == 2
            if ok and not self.v5 and None not in dims:
                self.transposed = dims[0] < dims[1]
            if ok and self.transposed is not None:
                width = dims[0] if self.transposed else dims[1]
                ok = width is None or width > self.lead
            if not ok:
                raise ConfigError(f"{want}; the model has {_describe(outputs)}",
                                  hint="choose the postprocess.type that matches the model's head")
            if None not in dims:
                self.expect = tuple(dims)

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
        what = "objectness and class scores" if self.v5 else "class scores"
        self.check_scores(a[:, 4:], f"the {what} of {where} [{len(a)} rows x {a.shape[1]}]")
        if len(a) and float(a[:, 2:4].min()) < 0:
            raise ConfigError(f"postprocess {self.cfg.type}: {where} has negative box sizes, so its rows are not "
                              "boxes (x, y, w, h)", hint=_WRONG_TYPE)

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        a = self.rows(outputs)
        normalised = a.shape[0] > 0 and float(np.abs(a[:, :4]).max()) <= 1.5
        thr = self.cfg.score_threshold
        if self.v5:
            a = a[a[:, 4] >= thr]  # class scores are <= 1, so the score cannot exceed the objectness
            cls_scores = a[:, 5:] * a[:, 4:5]
        else:
            cls_scores = a[:, 4:]
        classes = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(a)), classes]
        keep = scores >= thr
        xywh, scores, classes = a[keep, :4], scores[keep], classes[keep]
        if normalised:
            xywh = xywh * np.asarray([self.input_w, self.input_h, self.input_w, self.input_h], np.float32)
        half = xywh[:, 2:] / 2
        boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
        return self.finish(boxes, scores, classes, None, transform)


class _Ssd(_Decoder):
    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        preset = blazeface_preset(*input_size) if cfg.type == "blazeface" else {}
        super().__init__(cfg, input_size, labels if labels is not None else preset.get("labels"))
        o = {k: getattr(cfg, k) if getattr(cfg, k) is not None else preset.get(k, v) for k, v in SSD_DEFAULTS.items()}
        self.nms_kind = o["nms"]
        if "iou_threshold" not in cfg.model_fields_set:
            self.iou_threshold = preset.get("iou_threshold", cfg.iou_threshold)
        want = (f"{cfg.type} expects two outputs, boxes [1, N, 4+2K] (box, then K keypoints) and scores [1, N, C]"
                "; the model has " + _describe(outputs))
        boxes, scores = match_ssd_outputs(outputs, cfg.boxes_output, cfg.scores_output, want)
        self.head = SsdHead(o, boxes, scores, input_size)

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        raw, logits = self.array(outputs, self.head.boxes), self.array(outputs, self.head.scores)
        boxes, scores, classes, kps = self.head.decode(raw, logits, self.cfg.score_threshold)
        return self.finish(boxes, scores, classes, kps, transform)

    def check(self, outputs: dict[str, np.ndarray]) -> None:
        super().check(outputs)
        logits = self.array(outputs, self.head.scores).reshape(len(self.head.anchors), -1)
        where = f"output {self.head.scores.name!r}"
        self.check_labels(logits.shape[1], where)
        if not self.head.o["sigmoid_score"]:
            self.check_scores(logits, where, hint="set sigmoid_score: true if the model outputs logits")


class _Raw(_Decoder):
    kind = "raw"

    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        super().__init__(cfg, input_size, labels)
        self.spec = _pick_one(cfg, outputs, "raw needs an output", strict=False) if cfg.output else None

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        names = [self.spec.name] if self.spec is not None else list(outputs)
        missing = [n for n in names if n not in outputs]
        if missing:
            raise MalformedOutput(f"output {missing[0]!r} is missing (got {', '.join(outputs) or 'none'})")
        return Result(kind="raw", raw={n: np.asarray(outputs[n]) for n in names})  # as they are, NaN included


_DECODERS: dict[str, type[_Decoder]] = {"classification": _Classify, "yolov5": _Yolo, "yolov8": _Yolo,
                                        "ssd": _Ssd, "blazeface": _Ssd, "raw": _Raw}


class Postprocessor:
    """`process(item)` sets item.result from item.outputs (one item, no batch axis). Stateless per item, so one
    instance serves every worker thread; a malformed output gives item.error and an empty result, never a raise."""

    def __init__(self, decoder: _Decoder) -> None:
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


def build_postprocessor(cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int]
                        ) -> Postprocessor:
    """A Postprocessor for a model with these outputs and this input (width, height); ConfigError when they do not
    fit the decoder."""
    decoder = _DECODERS[cfg.type](cfg, list(outputs), input_size, _read_labels(cfg))
    return Postprocessor(decoder)
