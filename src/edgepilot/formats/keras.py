"""Read a Keras model (.keras / .h5) or a TensorFlow SavedModel without running code from it (the `tf` extra)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepilot.errors import ModelError, first_line
from edgepilot.formats import TRUST_HINT
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require


def describe(path: Path, fmt: Format, *, trust_model_code: bool = False) -> Model:
    tf = require("tensorflow", "tf")
    if fmt == Format.SAVEDMODEL:
        return _describe_savedmodel(tf, path)
    try:
        # safe_mode refuses Lambda layers and other Python code in the file, unless the user trusts it
        m = tf.keras.models.load_model(str(path), compile=False, safe_mode=not trust_model_code)
    except Exception as e:
        why = first_line(e)
        if "safe_mode" in str(e):
            raise ModelError(f"{path}: the model holds Python code (a Lambda layer or a custom object); "
                             "edgepilot does not run code from a model file", hint=TRUST_HINT) from None
        raise ModelError(f"{path}: Keras cannot load it ({why})",
                         hint="the file may be truncated, or it holds custom layers") from e
    return Model(
        path=path, format=Format.KERAS, params=int(m.count_params()), files=[path],
        inputs=[_spec(t.name, t.dtype, t.shape) for t in m.inputs],
        outputs=[_spec(t.name, t.dtype, t.shape) for t in m.outputs],
        meta={"keras_version": tf.keras.__version__, "name": m.name},
    )


def _describe_savedmodel(tf, path: Path) -> Model:
    """Signatures and variables from saved_model.pb as protobuf: loading it into TensorFlow would run its graph."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        if (path / "saved_model.pb").exists():
            saved.ParseFromString((path / "saved_model.pb").read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(), saved)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError, RecursionError, OSError) as e:
        raise ModelError(f"{path}: saved_model.pb is not a readable SavedModel ({type(e).__name__})") from None
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved.meta_graphs)
    sig = graphs[0].signature_def.get("serving_default") if graphs else None
    if sig is None:
        raise ModelError(f"{path}: the SavedModel has no 'serving_default' signature",
                         hint="export it with model.export(path) or tf.saved_model.save(..., signatures=...)")
    # Keras exports track each variable from two places: count each name once
    variables = list({n.variable.name or f"#{i}": n.variable for i, n in enumerate(graphs[0].object_graph_def.nodes)
                      if n.WhichOneof("kind") == "variable"}.values())
    return Model(
        path=path, format=Format.SAVEDMODEL, files=[f for f in path.rglob("*") if f.is_file()],
        params=sum(int(np.prod([d.size for d in v.shape.dim])) for v in variables) if variables else None,
        inputs=[_tensor_info(tf, name, sig.inputs[name]) for name in sorted(sig.inputs)],
        outputs=[_tensor_info(tf, name, sig.outputs[name]) for name in sorted(sig.outputs)],
    )


def _tensor_info(tf, name: str, info) -> TensorSpec:
    try:
        dtype = np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype).name
    except TypeError:
        raise ModelError(f"signature tensor {name!r} has a dtype numpy cannot hold (code {info.dtype})") from None
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return _spec(name, dtype, shape)


def _spec(name: str, dtype, shape) -> TensorSpec:
    dt = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    if shape is None:
        return TensorSpec(name, np.dtype(dt).name, None)
    return TensorSpec(name, np.dtype(dt).name, tuple(None if d is None or d < 0 else int(d) for d in shape))
