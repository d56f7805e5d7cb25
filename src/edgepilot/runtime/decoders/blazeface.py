"""BlazeFace, MediaPipe's face detector: an SSD head whose anchor and decoding options follow from its input size."""
from __future__ import annotations

from typing import Any

from edgepilot.errors import ConfigError
from edgepilot.runtime.decoders.ssd import SsdDecoder

# MediaPipe's face-detection graphs (modules/face_detection/face_detection_{short,full}_range.pbtxt,
# graphs/face_detection/face_detection_back_desktop_live.pbtxt): input size -> anchor and decoding options.
_BLAZEFACE: dict[tuple[int, int], dict[str, Any]] = {
    (128, 128): {"num_layers": 4, "strides": [8, 16, 16, 16], "min_scale": 0.1484375,
                 "interpolated_scale_aspect_ratio": 1.0},  # front / short range: 896 anchors
    (256, 256): {"num_layers": 4, "strides": [16, 32, 32, 32], "min_scale": 0.15625,
                 "interpolated_scale_aspect_ratio": 1.0},  # back camera: 896 anchors
    (192, 192): {"num_layers": 1, "strides": [4], "min_scale": 0.1484375,
                 "interpolated_scale_aspect_ratio": 0.0},  # full range: 48x48 = 2304 anchors
}


def blazeface_preset(input_w: int, input_h: int) -> dict[str, Any]:
    """The SSD options MediaPipe uses for the BlazeFace model of this input size."""
    base = _BLAZEFACE.get((input_w, input_h))
    if base is None:
        sizes = ", ".join(f"{w}x{h}" for w, h in _BLAZEFACE)
        raise ConfigError(f"blazeface has no preset for a {input_w}x{input_h} input (known: {sizes})",
                          hint="use postprocess type 'ssd' and give the anchor options (strides, num_layers ...)")
    return {**base, "max_scale": 0.75, "anchor_offset_x": 0.5, "anchor_offset_y": 0.5, "aspect_ratios": [1.0],
            "reduce_boxes_in_lowest_layer": False, "fixed_anchor_size": True,
            "x_scale": float(input_w), "y_scale": float(input_h), "w_scale": float(input_w),
            "h_scale": float(input_h), "num_keypoints": 6, "sigmoid_score": True, "score_clipping_thresh": 100.0,
            "box_order": "xywh", "nms": "weighted", "iou_threshold": 0.3, "labels": ["face"]}


class BlazefaceDecoder(SsdDecoder):
    """The SSD decoder with MediaPipe's BlazeFace preset for the model's input size (128, 256 or 192 px)."""

    name = "blazeface"

    @classmethod
    def preset(cls, input_w: int, input_h: int) -> dict[str, Any]:
        return blazeface_preset(input_w, input_h)
