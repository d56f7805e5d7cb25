"""Which precision a variant computes in. Read from its id until the variant catalogue holds it."""
from __future__ import annotations

from typing import Literal

Precision = Literal["fp32", "fp16", "bf16", "int8", "int8-weights"]


def precision_of(variant: str) -> Precision:
    """'int8' for full int8 compute (static or dynamic activations), 'int8-weights' for int8 weights with float
    compute (TFLite dynamic range, MNN weight-only), else the float precision."""
    parts = set(variant.split("-"))
    if "int8" in parts:
        return "int8-weights" if "weights" in parts else "int8"
    if "dynamic" in parts:
        return "int8-weights"
    if parts & {"fp16", "float16"}:
        return "fp16"
    if "bf16" in parts:
        return "bf16"
    return "fp32"
