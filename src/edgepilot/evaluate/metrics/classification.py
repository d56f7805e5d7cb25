"""Classification: top-k accuracy against labels, top-k agreement with a reference's predicted class."""
from __future__ import annotations

import numpy as np


def _rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).reshape(len(x), -1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of samples whose label is among the k highest scores."""
    s = _rows(scores)
    if len(s) == 0:
        return float("nan")
    k = min(k, s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return float((top == np.asarray(labels).reshape(-1, 1)).any(axis=1).mean())


def topk_agreement(scores: np.ndarray, reference: np.ndarray, k: int = 1) -> float:
    """Share of samples whose reference class (its arg-max) is among the variant's k highest scores.

    A sample on which the variant's scores are all equal (e.g. all zeros) predicts nothing and disagrees."""
    s, r = _rows(scores), _rows(reference)
    if len(s) == 0:
        return float("nan")
    k = min(k, s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    hit = (top == r.argmax(1)[:, None]).any(axis=1)
    decided = s.max(axis=1) > s.min(axis=1) if s.shape[1] > 1 else np.ones(len(s), bool)
    return float((hit & decided).mean())
