"""The pass registry: every conversion and optimisation step edgepilot can apply."""
from __future__ import annotations

from functools import cache

from edgepilot.errors import ConfigError
from edgepilot.optional import load_registry
from edgepilot.passes.base import Pass, PassContext

# A new pass is one line here and one module beside this file.
_REGISTRY = (
    "edgepilot.passes.keras_to_tflite:KerasToTFLite",
    "edgepilot.passes.keras_to_onnx:KerasToOnnx",
    "edgepilot.passes.torch_to_onnx:TorchToOnnx",
    "edgepilot.passes.onnx_to_openvino:OnnxToOpenVINO",
    "edgepilot.passes.onnx_to_mnn:OnnxToMNN",
    "edgepilot.passes.onnx_to_ncnn:OnnxToNcnn",
    "edgepilot.passes.onnx_simplify:OnnxSimplify",
    "edgepilot.passes.onnx_fold_constants:OnnxFoldConstants",
    "edgepilot.passes.onnx_fp16:OnnxFp16",
    "edgepilot.passes.onnx_quantize:OnnxQuantizeDynamic",
    "edgepilot.passes.onnx_quantize:OnnxQuantizeStatic",
    "edgepilot.passes.openvino_nncf:OpenVINONncfInt8",
    "edgepilot.passes.tflite_to_micro:TFLiteToMicro",
    "edgepilot.passes.onnx_to_tensorrt:OnnxToTensorRT",
    "edgepilot.passes.mnn_quantize:MNNQuantizeInt8",
    "edgepilot.passes.tflite_widen:TFLiteWiden",
    "edgepilot.passes.tflite_quantize:TFLiteQuantize",
    "edgepilot.passes.tflite_to_onnx:TFLiteToOnnx",
    "edgepilot.passes.onnx_to_tflite:OnnxToTFLite",
)

__all__ = ["Pass", "PassContext", "all_passes", "get_pass"]


@cache
def all_passes() -> dict[str, type[Pass]]:
    return load_registry(_REGISTRY)


def get_pass(name: str) -> Pass:
    try:
        return all_passes()[name]()
    except KeyError:
        raise ConfigError(f"unknown pass {name!r}", hint=f"choose one of {', '.join(all_passes())}") from None
