"""Tensors on the wire: the protocols' datatype names, JSON and raw-bytes decoding, the checks every request gets."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np

from edgepilot.engines.base import check_feeds
from edgepilot.errors import InputError
from edgepilot.model import TensorSpec

# KServe v2 / Triton datatype names of the numpy dtypes engines take and give (BYTES: no engine takes strings).
KSERVE_DTYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
NUMPY_DTYPES = {v: k for k, v in KSERVE_DTYPES.items()}


def kserve_dtype(dtype: str | np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in KSERVE_DTYPES:
        raise InputError(f"datatype {name} has no KServe v2 name")
    return KSERVE_DTYPES[name]


def wire_shape(spec: TensorSpec) -> list[int]:
    """The spec's shape with every dynamic or unknown dimension as -1, as both protocols write it."""
    if spec.shape is None:
        return [-1]
    return [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape]


try:  # ten times faster than the standard library on tensors of numbers; as strict (no NaN, depth ≤ 1024)
    import orjson
except ImportError:  # pragma: no cover - the serve extra installs it
    orjson = None


def loads_json(body: bytes | str, what: str = "request") -> Any:
    """Strict JSON: NaN/Infinity literals and absurd nesting are malformed input, not a crash."""
    try:
        if orjson is not None:
            return orjson.loads(body)
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise InputError(f"malformed JSON in the {what}: {e}") from None


def dumps_json(content: Any) -> bytes:
    """Compact JSON (a float that is not finite becomes null with orjson, never an invalid literal)."""
    if orjson is not None:
        return orjson.dumps(content)
    return json.dumps(content, separators=(",", ":")).encode()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def from_json_data(data: Any, dtype: str, shape: list[int], name: str) -> np.ndarray:
    """A tensor from KServe JSON `data` (flat or nested, row-major) of the declared datatype and shape."""
    np_dtype = _numpy_dtype(dtype, name)
    try:
        x = np.asarray(data, dtype=np_dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise InputError(f"input {name!r}: data is not a list of {dtype} values ({e})") from None
    if np_dtype != np.bool_ and _has_bool(data):
        raise InputError(f"input {name!r}: data holds true/false, the datatype is {dtype}")
    return _reshape(x, shape, name)


def _has_bool(data: Any) -> bool:
    while isinstance(data, list) and data:
        data = data[0]
    return isinstance(data, bool)


def from_bytes(raw: bytes | memoryview, dtype: str, shape: list[int], name: str) -> np.ndarray:
    """A tensor from the binary extension's raw little-endian bytes."""
    np_dtype = np.dtype(_numpy_dtype(dtype, name)).newbyteorder("<")
    if len(raw) % np_dtype.itemsize:
        raise InputError(f"input {name!r}: {len(raw)} bytes is not a whole number of {dtype} values")
    x = np.frombuffer(raw, dtype=np_dtype)
    return _reshape(x.astype(x.dtype.newbyteorder("=")), shape, name)


def to_bytes(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()


def _numpy_dtype(dtype: Any, name: str) -> str:
    if not isinstance(dtype, str) or dtype not in NUMPY_DTYPES:
        raise InputError(f"input {name!r}: unsupported datatype {dtype!r}",
                         hint=f"use one of {', '.join(NUMPY_DTYPES)}")
    return NUMPY_DTYPES[dtype]


def _reshape(x: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InputError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if x.size != int(np.prod(shape)):
        raise InputError(f"input {name!r}: shape {shape} holds {int(np.prod(shape))} values, the data has {x.size}")
    return x.reshape(shape)


def validate_feeds(inputs: list[TensorSpec], feeds: dict[str, np.ndarray], *,
                   reject_nonfinite: bool, whole: bool = False) -> dict[str, np.ndarray]:
    """Names, dtypes and shapes against the model (through the engines' own check; any batch size is fine, the
    scheduler splits and pads), one batch size across inputs, and no NaN/Inf if asked. `whole`: a model without a
    batch dimension, whose inputs are checked as they are."""
    feeds = check_feeds(inputs if whole else [replace(s, shape=(None, *s.shape[1:])) for s in inputs], feeds)
    sizes = {x.shape[0] for x in feeds.values()}
    if len(sizes) > 1 and not whole:
        raise InputError(f"inputs must share one batch size (first dimension), got {sorted(sizes)}")
    if reject_nonfinite:
        for name, x in feeds.items():
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                raise InputError(f"input {name!r} contains NaN or Inf",
                                 hint="send finite values, or set reject_nonfinite: false in the model's config")
    return feeds
