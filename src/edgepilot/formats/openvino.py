"""Read an OpenVINO IR (.xml + .bin): IO specs and parameter count."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepilot.errors import ModelError, first_line
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.optional import require


def describe(path: Path, fmt: Format = Format.OPENVINO) -> Model:
    ov = require("openvino", "openvino")
    weights = path.with_suffix(".bin")
    if not weights.exists():
        raise ModelError(f"{path}: the weights file {weights.name} is missing beside it",
                         hint="an OpenVINO IR is an .xml file and a .bin file with the same stem")
    try:
        m = ov.Core().read_model(str(path))
    except Exception as e:
        raise ModelError(f"{path}: not a valid OpenVINO IR ({first_line(e)})") from e
    params = sum(int(np.prod(list(op.get_output_shape(0)), dtype=np.int64))
                 for op in m.get_ops() if op.get_type_name() == "Constant" and op.get_output_size() == 1
                 and op.get_output_element_type(0).is_real())
    return Model(
        path=path, format=Format.OPENVINO, inputs=[_spec(p) for p in m.inputs], outputs=[_spec(p) for p in m.outputs],
        params=params, files=[path, weights], meta={"name": m.get_friendly_name()},
    )


def _spec(port) -> TensorSpec:
    names = port.get_names()
    name = port.get_any_name() if names else port.get_node().get_friendly_name()
    pshape = port.get_partial_shape()
    shape = None
    if pshape.rank.is_static:
        shape = tuple(d.get_length() if d.is_static else None for d in pshape)
    return TensorSpec(name, np.dtype(port.get_element_type().to_dtype()).name, shape)
