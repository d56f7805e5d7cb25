"""Detection: outputs decoded by the runtime's own decoders, boxes matched at IoU 0.5 → precision, recall, F1, mAP@0.5.

The "truth" is the reference's detections (agreement) or labelled boxes (accuracy); the matching is the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepilot.model import TensorSpec
from edgepilot.runtime.decoders import PostprocessConfig, build_postprocessor


@dataclass
class Boxes:
    """One image's detections: boxes [n, 4] (x1, y1, x2, y2), scores [n], classes [n]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclass
class DetectionScore:
    precision: float
    recall: float
    f1: float
    map50: float
    detections: int  # the variant's, over every image
    truth: int  # the reference's (or the labels') boxes, over every image


def decode(cfg: PostprocessConfig, specs: list[TensorSpec], input_size: tuple[int, int],
           outputs: dict[str, np.ndarray]) -> list[Boxes]:
    """Every sample's outputs ([N, ...] per output, named as `specs`) to its detections, in model-input pixels."""
    pp = build_postprocessor(cfg, specs, input_size).decoder
    n = len(next(iter(outputs.values())))
    found = []
    for i in range(n):
        dets = pp.decode({k: v[i] for k, v in outputs.items()}, None).detections
        found.append(Boxes(np.asarray([d.box for d in dets], np.float64).reshape(-1, 4),
                           np.asarray([d.score for d in dets], np.float64),
                           np.asarray([d.class_id for d in dets], np.int64)))
    return found


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    h = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    inter = w * h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(pred: Boxes, truth: Boxes, iou: float) -> np.ndarray:
    """Whether each prediction (best score first) matches a not yet matched truth box of its class at >= iou."""
    order = np.argsort(-pred.scores, kind="stable")
    taken = np.zeros(len(truth.boxes), bool)
    hit = np.zeros(len(pred.boxes), bool)
    for i in order:
        same = (truth.classes == pred.classes[i]) & ~taken
        if not same.any():
            continue
        overlaps = np.where(same, _iou(pred.boxes[i], truth.boxes) if len(truth.boxes) else 0.0, -1.0)
        j = int(overlaps.argmax())
        if overlaps[j] >= iou:
            taken[j], hit[i] = True, True
    return hit


def _average_precision(scores: np.ndarray, hits: np.ndarray, n_truth: int) -> float:
    """Area under the precision-recall curve, precision made monotone (all-point interpolation, as VOC 2010+)."""
    if n_truth == 0:
        return 1.0 if len(scores) == 0 else 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = np.concatenate([[0.0], tp / n_truth])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def detection_score(pred: list[Boxes], truth: list[Boxes], iou: float = 0.5) -> DetectionScore:
    """Predictions against the truth, image by image. With no box on either side, they agree fully."""
    hits = [_match(p, t, iou) for p, t in zip(pred, truth)]
    tp = sum(int(h.sum()) for h in hits)
    n_pred = sum(len(p.boxes) for p in pred)
    n_truth = sum(len(t.boxes) for t in truth)
    precision = tp / n_pred if n_pred else (1.0 if n_truth == 0 else 0.0)
    recall = tp / n_truth if n_truth else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    classes = np.unique(np.concatenate([np.concatenate([p.classes for p in pred] or [np.zeros(0, np.int64)]),
                                        np.concatenate([t.classes for t in truth] or [np.zeros(0, np.int64)])]))
    aps = []
    for c in classes:
        scores = np.concatenate([p.scores[p.classes == c] for p in pred])
        class_hits = np.concatenate([h[p.classes == c] for p, h in zip(pred, hits)])
        aps.append(_average_precision(scores, class_hits, sum(int((t.classes == c).sum()) for t in truth)))
    return DetectionScore(precision=precision, recall=recall, f1=f1, map50=float(np.mean(aps)) if aps else 1.0,
                          detections=n_pred, truth=n_truth)
