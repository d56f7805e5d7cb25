"""Segmentation: mask IoU between a variant's and a reference's masks (a probability map thresholded, a
multi-class map arg-maxed)."""
from __future__ import annotations

import numpy as np


def class_axis(shape: tuple[int, ...]) -> int | None:
    """The class axis of a segmentation output [N, C, H, W] or [N, H, W, C]; None for one map [N, H, W]."""
    if len(shape) != 4:
        return None
    return 1 if shape[1] <= min(shape[2], shape[3]) else 3


def masks(x: np.ndarray, threshold: float) -> np.ndarray:
    """Per-pixel class ids [N, H, W]: the arg-max over classes, or (one map) 1 where x > threshold."""
    x = np.asarray(x)
    axis = class_axis(x.shape)
    if axis is not None and x.shape[axis] > 1:
        return x.argmax(axis=axis)
    if axis is not None:
        x = x.squeeze(axis)
    return (x > threshold).astype(np.int64)


def threshold_for(reference: np.ndarray) -> float:
    """0.5 for probabilities, 0 for logits (the same decision: sigmoid(0) = 0.5)."""
    r = np.asarray(reference)
    return 0.5 if r.size and r.min() >= 0 and r.max() <= 1 else 0.0


def mask_iou(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean over samples of the mean IoU over the classes (background excluded) either mask holds.

    A sample where neither mask holds any foreground agrees fully (1)."""
    t = threshold_for(reference)
    a, b = masks(outputs, t), masks(reference, t)
    scores = []
    for pa, pb in zip(a, b):
        classes = np.setdiff1d(np.union1d(np.unique(pa), np.unique(pb)), [0])
        if classes.size == 0:
            scores.append(1.0)
            continue
        ious = [np.logical_and(pa == c, pb == c).sum() / np.logical_or(pa == c, pb == c).sum() for c in classes]
        scores.append(float(np.mean(ious)))
    return float(np.mean(scores)) if scores else float("nan")
