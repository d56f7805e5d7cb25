"""Run a session over a dataset: every output for every sample, in batches the model accepts."""
from __future__ import annotations

import numpy as np

from edgepilot.engines.base import Session


def predict(session: Session, x: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Every output for every sample, batch first (fixed-batch models run batch by batch, the last one padded)."""
    spec = session.inputs[0]
    fixed = spec.shape is not None and isinstance(spec.shape[0], int) and spec.shape[0] >= 1
    step = spec.shape[0] if fixed else batch_size
    chunks: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if fixed and n < step:  # pad the last fixed-size batch, then drop the padding
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
        for name, value in session.run({spec.name: chunk}).items():
            chunks.setdefault(name, []).append(np.asarray(value)[:n])
    order = [o.name for o in session.outputs if o.name in chunks] + [n for n in chunks if n not in
                                                                      {o.name for o in session.outputs}]
    return {name: np.concatenate(chunks[name]) for name in order}  # in the model's output order
