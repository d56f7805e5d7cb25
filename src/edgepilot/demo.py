"""The demo: a small generated CNN converted for every available engine and benchmarked on each.

Until the optimizer lands, the conversions live here as plain functions (the test fixtures use
them too); the optimize issue turns them into passes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgepilot.errors import EdgepilotError
from edgepilot.optional import require

log = logging.getLogger(__name__)


def torch_to_onnx(module, example, path: Path, dynamic_batch: bool = True, opset: int = 17) -> Path:
    """Export a torch module to one self-contained ONNX file, input 'input' and output 'output'."""
    torch = require("torch", "torch")
    torch.onnx.export(
        module.eval(), (torch.as_tensor(example),), str(path), input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
        dynamo=False, opset_version=opset,
    )
    return path


def keras_to_tflite(model, path: Path, representative=None) -> Path:
    """Convert a Keras model to float32 TFLite, or to full int8 (int8 I/O) given representative samples."""
    tf = require("tensorflow", "tf")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[None]] for x in representative)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    path.write_bytes(conv.convert())
    return path


def onnx_to_openvino(onnx_path: Path, xml: Path) -> Path:
    ov = require("openvino", "openvino")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml
