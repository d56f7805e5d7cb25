"""Generic tensors (landmarks, embeddings, regression): absolute and relative error, SQNR and cosine similarity."""
from __future__ import annotations

import numpy as np


def _rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(len(x), -1)


def cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean per-sample cosine similarity. Two zero vectors agree (1); a zero vector against any other is 0."""
    a, b = _rows(outputs), _rows(reference)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    norms = na * nb
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
    return float(np.where(both_zero, 1.0, cos).mean()) if len(a) else float("nan")


def sqnr_db(outputs: np.ndarray, reference: np.ndarray) -> float | None:
    """Signal (the reference) to noise (the difference) in dB; None where the outputs are exactly the reference's."""
    b = np.asarray(reference, np.float64)
    noise = float(((np.asarray(outputs, np.float64) - b) ** 2).sum())
    if noise == 0:
        return None
    return float(10 * np.log10(max(float((b**2).sum()), 1e-30) / noise))


def tensor_errors(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """max/mean absolute error, the max error relative to the reference's largest magnitude, SQNR and cosine."""
    a, b = _rows(outputs), _rows(reference)
    diff = np.abs(a - b)
    scale = float(np.abs(b).max()) if b.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs_error": max_abs, "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
            "max_rel_error": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf")),
            "sqnr_db": sqnr_db(a, b), "cosine": cosine(a, b)}
