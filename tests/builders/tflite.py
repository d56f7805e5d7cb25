"""TFLite float32 from the Keras reference, and a full-int8 variant for the quantised-IO tests."""
from pathlib import Path

import numpy as np

from builders import Built, keras_model, sample


def convert(kind: str, path: Path, int8: bool = False) -> Path:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model(kind))
    if int8:
        rng = np.random.default_rng(1)
        shape = (1, 64) if kind == "mlp" else (1, 32, 32, 3)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.standard_normal(shape).astype(np.float32)] for _ in range(32))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    path.write_bytes(conv.convert())
    return path


def build(kind: str, workdir: Path) -> Built:
    path = convert(kind, workdir / f"{kind}.tflite")
    x = sample(kind, layout="nhwc")
    expected = keras_model(kind)(x).numpy()
    return Built(path, [x], [expected], files=[path])
