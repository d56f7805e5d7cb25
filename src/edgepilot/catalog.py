"""The variant catalogue: what each variant is (family, precision, engine) and how it is built (pass, options, source).

Variant identity is data here and nowhere else: the planner, the evaluator, the report and `select` read
these rows instead of parsing variant names. A new pass costs a module, a registry line and a row here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgepilot.model import Format, Model

SOURCE = "source"  # the model the user gave, as a `source` of the first steps

# Precisions, by what is stored and computed.
FP32, FP16, BF16 = "fp32", "fp16", "bf16"
INT8 = "int8"  # weights and activations in int8 (static, calibrated)
DYNAMIC_INT8 = "dynamic-int8"  # int8 weights, activations quantised at run time
INT8_WEIGHTS = "int8-weights"  # int8 weights dequantised to float before compute
QUANTIZED = frozenset({INT8, DYNAMIC_INT8, INT8_WEIGHTS})


@dataclass(frozen=True)
class VariantSpec:
    id: str
    family: str  # the --formats name: tflite, micro, onnx, openvino, mnn, ncnn, tensorrt
    precision: str  # one of the precisions above
    engine: str  # the engine that measures it (and that a device runs it on)
    pass_name: str
    source: str  # the variant it is built from, or SOURCE
    options: dict[str, Any] = field(default_factory=dict)
    compute: str | None = None  # EngineOptions.precision to open it with; None: fp32 arithmetic for float models
    needs: str | None = None  # a host capability it needs (see host.has_capability)


_S = VariantSpec
CATALOGUE: tuple[VariantSpec, ...] = (  # in build order: a row's source comes before it
    # a TFLite source with fp16 weights (MediaPipe's): the same model with fp32 weights, the other TFLite
    # quantisations and the TFLite → ONNX conversion start from it
    _S("tflite-fp32", "tflite", FP32, "litert", "tflite-widen", SOURCE),
    _S("tflite-fp32", "tflite", FP32, "litert", "keras-to-tflite", SOURCE, {"precision": "float32"}),
    _S("tflite-dynamic", "tflite", DYNAMIC_INT8, "litert", "keras-to-tflite", SOURCE, {"precision": "dynamic"}),
    _S("tflite-fp16", "tflite", FP16, "litert", "keras-to-tflite", SOURCE, {"precision": "float16"}),
    _S("tflite-int8", "tflite", INT8, "litert", "keras-to-tflite", SOURCE, {"precision": "int8"}),
    # LiteRT's own quantiser on a float TFLite model (a TFLite source, or the Keras converter's float32)
    _S("tflite-dynamic", "tflite", DYNAMIC_INT8, "litert", "tflite-quantize", "tflite-fp32", {"precision": "dynamic"}),
    _S("tflite-int8-weights", "tflite", INT8_WEIGHTS, "litert", "tflite-quantize", "tflite-fp32",
       {"precision": "int8-weights"}),
    _S("tflite-fp16", "tflite", FP16, "litert", "tflite-quantize", "tflite-fp32", {"precision": "float16"}),
    _S("tflite-int8", "tflite", INT8, "litert", "tflite-quantize", "tflite-fp32", {"precision": "int8"}),
    _S("onnx-fp32", "onnx", FP32, "onnxruntime", "keras-to-onnx", SOURCE),
    _S("onnx-fp32", "onnx", FP32, "onnxruntime", "torch-to-onnx", SOURCE),
    # an ONNX source with its weights in initializers (paddle2onnx keeps them in Constant nodes)
    _S("onnx-fp32", "onnx", FP32, "onnxruntime", "onnx-fold-constants", SOURCE),
    _S("onnx-fp32", "onnx", FP32, "onnxruntime", "tflite-to-onnx", "tflite-fp32"),
    # ONNX → TFLite (onnx2tf): how ONNX and PyTorch sources (through torch-to-onnx) reach LiteRT and TFLite Micro
    _S("tflite-fp32", "tflite", FP32, "litert", "onnx-to-tflite", "onnx-fp32", {"precision": "float32"}),
    _S("tflite-dynamic", "tflite", DYNAMIC_INT8, "litert", "onnx-to-tflite", "onnx-fp32", {"precision": "dynamic"}),
    _S("tflite-fp16", "tflite", FP16, "litert", "onnx-to-tflite", "onnx-fp32", {"precision": "float16"}),
    _S("tflite-int8", "tflite", INT8, "litert", "onnx-to-tflite", "onnx-fp32", {"precision": "int8"}),
    _S("tflite-int8-weights", "tflite", INT8_WEIGHTS, "litert", "tflite-quantize", "tflite-fp32",
       {"precision": "int8-weights"}),
    _S("micro-int8", "micro", INT8, "tflite-micro", "tflite-to-micro", "tflite-int8"),
    _S("onnx-fp16", "onnx", FP16, "onnxruntime", "onnx-fp16", "onnx-fp32"),
    _S("onnx-int8-dynamic", "onnx", DYNAMIC_INT8, "onnxruntime", "onnx-quantize-dynamic", "onnx-fp32"),
    _S("onnx-int8-static", "onnx", INT8, "onnxruntime", "onnx-quantize-static", "onnx-fp32"),
    _S("openvino-fp32", "openvino", FP32, "openvino", "to-openvino", "onnx-fp32", {"precision": "fp32"}),
    # The same IR computed in bf16, where the CPU has bf16 arithmetic (AVX512_BF16, AMX, Armv8.6 BF16).
    _S("openvino-bf16", "openvino", BF16, "openvino", "to-openvino", "onnx-fp32", {"precision": "fp32"},
       compute=BF16, needs="bf16"),
    # fp16-compressed weights; the CPU plugin decompresses them and computes in fp32.
    _S("openvino-fp16", "openvino", FP16, "openvino", "to-openvino", "onnx-fp32", {"precision": "fp16"}),
    _S("openvino-int8", "openvino", INT8, "openvino", "openvino-nncf-int8", "onnx-fp32"),
    _S("mnn-fp32", "mnn", FP32, "mnn", "onnx-to-mnn", "onnx-fp32", {"precision": "fp32"}),
    _S("mnn-fp16", "mnn", FP16, "mnn", "onnx-to-mnn", "onnx-fp32", {"precision": "fp16"}, compute=FP16),
    _S("mnn-int8-weights", "mnn", INT8_WEIGHTS, "mnn", "onnx-to-mnn", "onnx-fp32", {"precision": "int8-weights"}),
    _S("mnn-int8", "mnn", INT8, "mnn", "mnn-quantize-int8", "onnx-fp32"),
    _S("ncnn-fp32", "ncnn", FP32, "ncnn", "onnx-to-ncnn", "onnx-fp32", {"precision": "fp32"}),
    _S("ncnn-fp16", "ncnn", FP16, "ncnn", "onnx-to-ncnn", "onnx-fp32", {"precision": "fp16"}, compute=FP16),
    _S("tensorrt-fp16", "tensorrt", FP16, "tensorrt", "onnx-to-tensorrt", "onnx-fp32", {"precision": "fp16"}),
)
FAMILIES = sorted({s.family for s in CATALOGUE})
# A source model of these formats already is the variant of that id, by the precision its weights hold.
_SOURCE_VARIANT = {Format.TFLITE: {FP32: "tflite-fp32", FP16: "tflite-fp16", DYNAMIC_INT8: "tflite-dynamic",
                                   INT8: "tflite-int8", INT8_WEIGHTS: "tflite-int8-weights"}}
# Float32 variants the agreement reference comes from, in order of preference.
REFERENCES = ("onnx-fp32", "tflite-fp32", "openvino-fp32")


def get(variant: str) -> VariantSpec | None:
    """The catalogue row of a variant id (rows sharing an id differ only in how they are built)."""
    return next((s for s in CATALOGUE if s.id == variant), None)


def source_variant(model: Model) -> str | None:
    """The variant a source model already is (a TFLite file: by the precision its weights hold), or None."""
    by_precision = _SOURCE_VARIANT.get(model.format)
    if not by_precision:
        return None
    return by_precision.get(source_precision(model) or FP32)


def source_precision(model: Model) -> str | None:
    """The precision a source model's weights are stored in, where the file says it (TFLite); else None."""
    if model.format != Format.TFLITE:
        return None
    from edgepilot.errors import EdgepilotError
    from edgepilot.formats.tflite_edit import weight_precision

    try:
        return weight_precision(model.path.read_bytes())
    except (EdgepilotError, OSError):  # no schema module to read it with: the TFLite default
        return FP32


def source_formats(variant: str) -> set[Format]:
    """The source formats a model of which already is `variant`."""
    return {f for f, by in _SOURCE_VARIANT.items() if variant in by.values()}


def families_for(runtimes: list[str]) -> list[str]:
    """The families whose variants these runtimes run."""
    return sorted({s.family for s in CATALOGUE if s.engine in runtimes})
