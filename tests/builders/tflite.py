"""TFLite float32 from the Keras reference, and a full-int8 variant, with the keras-to-tflite pass."""
from pathlib import Path

import numpy as np

from builders import Built, keras_model, sample
from edgepilot.model import Model
from edgepilot.passes import PassContext, get_pass


def convert(kind: str, path: Path, int8: bool = False) -> Path:
    src = path.with_name(path.stem + "-src.keras")
    keras_model(kind).save(src)
    shape = (64,) if kind == "mlp" else (32, 32, 3)
    calibration = {"input": np.random.default_rng(1).standard_normal((32, *shape)).astype(np.float32)}
    p = get_pass("keras-to-tflite")
    ctx = PassContext(path.parent, calibration=calibration)
    out = p.run(Model.load(src), p.options(precision="int8" if int8 else "float32"), ctx).path
    return out.rename(path)


def build(kind: str, workdir: Path) -> Built:
    path = convert(kind, workdir / f"{kind}.tflite")
    x = sample(kind, layout="nhwc")
    expected = keras_model(kind)(x).numpy()
    return Built(path, [x], [expected], files=[path])
