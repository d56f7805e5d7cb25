"""Non-maximum suppression for the detection decoders: greedy (hard) and MediaPipe's weighted variant."""
from __future__ import annotations

import numpy as np


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
