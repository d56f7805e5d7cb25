"""Accuracy against labels and agreement with a reference model's outputs."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from edgepilot.engines.base import Session


class Agreement(BaseModel):
    """How closely a variant's outputs follow the reference's on the same inputs."""

    top1_agreement: float  # share of samples whose arg-max class is the reference's
    max_abs_error: float
    mean_abs_error: float
    cosine: float  # mean per-sample cosine similarity of the output vectors


def predict(session: Session, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The first output for every sample, in batches the model accepts (fixed-batch models one by one)."""
    spec = session.inputs[0]
    fixed = spec.shape is not None and isinstance(spec.shape[0], int) and spec.shape[0] >= 1
    step = spec.shape[0] if fixed else batch_size
    out_name = session.outputs[0].name
    chunks = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        if fixed and len(chunk) < step:  # pad the last fixed-size batch, then drop the padding
            pad = np.repeat(chunk[-1:], step - len(chunk), axis=0)
            chunks.append(session.run({spec.name: np.concatenate([chunk, pad])})[out_name][: len(chunk)])
        else:
            chunks.append(session.run({spec.name: chunk})[out_name])
    out = np.concatenate(chunks)
    return out.reshape(len(x), -1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    if len(scores) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def agreement(outputs: np.ndarray, reference: np.ndarray) -> Agreement:
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    diff = np.abs(a - b)
    return Agreement(top1_agreement=float((a.argmax(1) == b.argmax(1)).mean()), max_abs_error=float(diff.max()),
                     mean_abs_error=float(diff.mean()), cosine=float(cos.mean()))
