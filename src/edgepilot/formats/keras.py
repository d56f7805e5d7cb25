"""Read a Keras model (.keras / .h5) or a TensorFlow SavedModel; needs TensorFlow (the `tf` extra)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepilot.errors import ModelError
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require


def describe(path: Path, fmt: Format) -> Model:
    tf = require("tensorflow", "tf")
    if fmt == Format.SAVEDMODEL:
        return _describe_savedmodel(tf, path)
    try:
        # safe_mode refuses Lambda layers and other arbitrary code in the file.
        m = tf.keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        raise ModelError(f"{path}: Keras cannot load it ({str(e).strip().splitlines()[0]})",
                         hint="the file may be truncated, or it holds custom layers or Lambda code") from e
    return Model(
        path=path, format=Format.KERAS, params=int(m.count_params()), files=[path],
        inputs=[_spec(t.name, t.dtype, t.shape) for t in m.inputs],
        outputs=[_spec(t.name, t.dtype, t.shape) for t in m.outputs],
        meta={"keras_version": tf.keras.__version__, "name": m.name},
    )


def _describe_savedmodel(tf, path: Path) -> Model:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ModelError(f"{path}: TensorFlow cannot load this SavedModel ({str(e).strip().splitlines()[0]})") from e
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ModelError(f"{path}: the SavedModel has no 'serving_default' signature",
                         hint="export it with model.export(path) or tf.saved_model.save(..., signatures=...)")
    ins = sig.structured_input_signature[1]
    outs = sig.structured_outputs
    variables = getattr(loaded, "variables", []) or []
    files = [f for f in path.rglob("*") if f.is_file()]
    return Model(
        path=path, format=Format.SAVEDMODEL, files=files,
        params=int(sum(np.prod(v.shape) for v in variables)) if variables else None,
        inputs=[_spec(name, s.dtype, s.shape) for name, s in ins.items()],
        outputs=[_spec(name, s.dtype, s.shape) for name, s in outs.items()],
    )


def _spec(name: str, dtype, shape) -> TensorSpec:
    dt = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    return TensorSpec(name, np.dtype(dt).name, tuple(None if d is None else int(d) for d in shape))
