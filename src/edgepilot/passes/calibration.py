"""Calibration data for the quantising passes: checked against the model's inputs, then served in batches."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgepilot.errors import InputError
from edgepilot.model import Model, TensorSpec
from edgepilot.passes.base import PassContext

_HINT = "pass --data with representative samples shaped like the model's input"


def calibration_set(model: Model, ctx: PassContext, limit: int | None = None) -> dict[str, np.ndarray]:
    """The calibration arrays by input name, at most `limit` samples each, in each input's dtype.

    Raises InputError when the data is missing, empty, or does not fit an input (names, ranks, sizes).
    """
    if not ctx.calibration:
        raise InputError("calibration data missing", hint=_HINT)
    data = dict(ctx.calibration)
    names = [t.name for t in model.inputs]
    if len(names) == 1 and len(data) == 1 and names[0] not in data:
        # A single array needs no name: the caller may have keyed it by another variant's input.
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise InputError(f"calibration data missing for input {missing[0]!r}",
                         hint=f"give arrays for every input: {', '.join(names)}")
    out = {}
    for spec in model.inputs:
        x = np.asarray(data[spec.name])
        if x.ndim == 0 or len(x) == 0:
            raise InputError("the calibration set is empty", hint=_HINT)
        _check_fit(x, spec)
        out[spec.name] = np.ascontiguousarray(x[:limit], dtype=spec.np_dtype)
    counts = {len(x) for x in out.values()}
    if len(counts) != 1:
        raise InputError(f"calibration arrays have different sample counts {sorted(counts)}")
    ctx.notes["calibration_samples"] = counts.pop()
    return out


def _check_fit(x: np.ndarray, spec: TensorSpec) -> None:
    if spec.shape is None:
        return
    want = spec.shape[1:]
    got = x.shape[1:]
    if len(got) != len(want) or any(isinstance(w, int) and w >= 0 and w != g for w, g in zip(want, got)):
        raise InputError(f"calibration shape ({', '.join(map(str, got))}) does not fit input {spec.name!r} "
                         f"({', '.join('?' if not isinstance(w, int) else str(w) for w in want)})",
                         hint="shapes are per sample, batch first; transpose or resize the data to match")


def batches(data: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of `batch_size` samples (the last may be smaller), in order."""
    n = len(next(iter(data.values())))
    for start in range(0, n, batch_size):
        yield {name: x[start:start + batch_size] for name, x in data.items()}


def fixed_batch(model: Model) -> int | None:
    """The batch size the model fixes on its first input, or None when it is dynamic."""
    shape = model.inputs[0].shape if model.inputs else None
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return shape[0]
    return None
