"""Post-processing: one item's raw model outputs to a Result (top-k classes, detections after NMS, or raw tensors).

One decoder per model family, each in its own module; `build_postprocessor` picks it by `postprocess.type`."""
from __future__ import annotations

from edgepilot.model import TensorSpec
from edgepilot.runtime.decoders.anchors import ssd_anchors
from edgepilot.runtime.decoders.base import Decoder, MalformedOutput, Postprocessor, read_labels
from edgepilot.runtime.decoders.blazeface import BlazefaceDecoder, blazeface_preset
from edgepilot.runtime.decoders.classification import ClassificationDecoder
from edgepilot.runtime.decoders.config import PostprocessConfig, SsdOptions
from edgepilot.runtime.decoders.nms import nms, weighted_nms
from edgepilot.runtime.decoders.raw import RawDecoder
from edgepilot.runtime.decoders.ssd import SsdDecoder
from edgepilot.runtime.decoders.yolov5 import Yolov5Decoder
from edgepilot.runtime.decoders.yolov8 import Yolov8Decoder

__all__ = [
    "DECODERS", "BlazefaceDecoder", "ClassificationDecoder", "Decoder", "MalformedOutput", "PostprocessConfig",
    "Postprocessor", "RawDecoder", "SsdDecoder", "SsdOptions", "Yolov5Decoder", "Yolov8Decoder", "blazeface_preset",
    "build_postprocessor", "nms", "ssd_anchors", "weighted_nms",
]

# postprocess.type -> its decoder; the one place that branches on a decoder's name
DECODERS: dict[str, type[Decoder]] = {d.name: d for d in (
    ClassificationDecoder, Yolov5Decoder, Yolov8Decoder, SsdDecoder, BlazefaceDecoder, RawDecoder)}


def build_postprocessor(cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int]
                        ) -> Postprocessor:
    """A Postprocessor for a model with these outputs and this input (width, height); ConfigError when they do not
    fit the decoder."""
    decoder = DECODERS[cfg.type](cfg, list(outputs), input_size, read_labels(cfg))
    return Postprocessor(decoder)
