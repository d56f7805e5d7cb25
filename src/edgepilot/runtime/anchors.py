"""SSD heads as MediaPipe reads them: options, anchors, box/keypoint decoding, output matching, BlazeFace presets."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from edgepilot.errors import ConfigError
from edgepilot.model import TensorSpec

# What an unset SSD option means for type "ssd" (MediaPipe's defaults); "blazeface" takes its preset instead.
SSD_DEFAULTS: dict[str, Any] = {
    "num_layers": None, "strides": None, "min_scale": 0.1484375, "max_scale": 0.75, "anchor_offset_x": 0.5,
    "anchor_offset_y": 0.5, "aspect_ratios": [1.0], "interpolated_scale_aspect_ratio": 1.0,
    "reduce_boxes_in_lowest_layer": False, "fixed_anchor_size": False, "x_scale": None, "y_scale": None,
    "w_scale": None, "h_scale": None, "apply_exponential_on_box_size": False, "box_order": "yxhw",
    "num_keypoints": None, "sigmoid_score": False, "score_clipping_thresh": None, "nms": "hard",
}


class SsdOptions(BaseModel):
    """The SSD fields of the postprocess config. None: the blazeface preset's value, or MediaPipe's default."""

    boxes_output: str | None = Field(None, description="ssd: the box/keypoint regressor output, e.g. regressors")
    scores_output: str | None = Field(None, description="ssd: the class score output, e.g. classificators")
    # anchors, as MediaPipe's SsdAnchorsCalculatorOptions
    num_layers: int | None = Field(None, ge=1, description="feature maps (defaults to len(strides))")
    strides: list[int] | None = Field(None, description="stride of each feature map, e.g. [8, 16, 16, 16]")
    min_scale: float | None = Field(None, gt=0, description="anchor scale of the first layer")
    max_scale: float | None = Field(None, gt=0, description="anchor scale of the last layer")
    anchor_offset_x: float | None = Field(None, description="anchor centre within its cell (0.5: the middle)")
    anchor_offset_y: float | None = Field(None, description="anchor centre within its cell (0.5: the middle)")
    aspect_ratios: list[float] | None = Field(None, description="anchor aspect ratios per layer")
    interpolated_scale_aspect_ratio: float | None = Field(
        None, description="aspect ratio of the extra interpolated-scale anchor per cell; 0 for none")
    reduce_boxes_in_lowest_layer: bool | None = Field(None, description="3 fixed anchors in the first layer")
    fixed_anchor_size: bool | None = Field(None, description="anchors of size 1 (the model predicts sizes outright)")
    # decoding, as MediaPipe's TensorsToDetectionsCalculatorOptions
    x_scale: float | None = Field(None, gt=0, description="box centre x divisor (default: input width)")
    y_scale: float | None = Field(None, gt=0, description="box centre y divisor (default: input height)")
    w_scale: float | None = Field(None, gt=0, description="box width divisor (default: input width)")
    h_scale: float | None = Field(None, gt=0, description="box height divisor (default: input height)")
    apply_exponential_on_box_size: bool | None = Field(None, description="w, h are log-encoded")
    box_order: Literal["xywh", "yxhw"] | None = Field(
        None, description="order of the 4 box values (and x,y vs y,x keypoints); yxhw unless blazeface")
    num_keypoints: int | None = Field(None, ge=0, description="keypoints after the box (default: from the "
                                                              "regressor width)")
    sigmoid_score: bool | None = Field(None, description="scores are logits (blazeface: yes)")
    score_clipping_thresh: float | None = Field(None, gt=0, description="clip logits to +-this before the sigmoid")


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def ssd_anchors(input_w: int, input_h: int, *, strides: Sequence[int], num_layers: int | None = None,
                min_scale: float = 0.1484375, max_scale: float = 0.75, anchor_offset_x: float = 0.5,
                anchor_offset_y: float = 0.5, aspect_ratios: Sequence[float] = (1.0,),
                interpolated_scale_aspect_ratio: float = 1.0, reduce_boxes_in_lowest_layer: bool = False,
                fixed_anchor_size: bool = True) -> np.ndarray:
    """[N, 4] anchors (x_center, y_center, w, h), normalised to the input, in the order the model emits its boxes.

    Consecutive layers with the same stride share one feature map: their anchors are interleaved per cell, as in
    MediaPipe (which is why BlazeFace's strides [8, 16, 16, 16] give 16x16x2 + 8x8x6 = 896 anchors)."""
    strides = list(strides)
    num_layers = len(strides) if num_layers is None else num_layers
    if num_layers != len(strides) or num_layers < 1:
        raise ConfigError(f"SSD anchors: num_layers is {num_layers} but {len(strides)} strides are given",
                          hint="give one stride per layer")
    if any(s <= 0 for s in strides):
        raise ConfigError(f"SSD anchors: strides must be positive, got {strides}")
    out: list[np.ndarray] = []
    layer = 0
    while layer < num_layers:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < num_layers and strides[last] == strides[layer]:
            scale = _scale(min_scale, max_scale, last, num_layers)
            if last == 0 and reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += list(aspect_ratios)
                scales += [scale] * len(aspect_ratios)
                if interpolated_scale_aspect_ratio > 0:
                    nxt = 1.0 if last == num_layers - 1 else _scale(min_scale, max_scale, last + 1, num_layers)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(interpolated_scale_aspect_ratio)
            last += 1
        root = np.sqrt(np.asarray(ratios, np.float64))
        widths, heights = np.asarray(scales) * root, np.asarray(scales) / root
        fh, fw = math.ceil(input_h / strides[layer]), math.ceil(input_w / strides[layer])
        ys, xs = np.meshgrid((np.arange(fh) + anchor_offset_y) / fh, (np.arange(fw) + anchor_offset_x) / fw,
                             indexing="ij")
        per_cell = len(ratios)
        a = np.empty((fh, fw, per_cell, 4), np.float64)
        a[..., 0] = xs[..., None]
        a[..., 1] = ys[..., None]
        a[..., 2] = 1.0 if fixed_anchor_size else widths
        a[..., 3] = 1.0 if fixed_anchor_size else heights
        out.append(a.reshape(-1, 4))
        layer = last
    return np.concatenate(out).astype(np.float32)


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


class MalformedOutput(ValueError):
    """An output that does not fit its decoder at run time."""


_ANCHOR_OPTIONS = ("strides", "num_layers", "min_scale", "max_scale", "anchor_offset_x", "anchor_offset_y",
                   "aspect_ratios", "interpolated_scale_aspect_ratio", "reduce_boxes_in_lowest_layer",
                   "fixed_anchor_size")


class SsdHead:
    """The anchors and decoding of one SSD head: resolved options `o`, its (boxes, scores) outputs, the input size.

    Immutable once built, so one head serves every thread."""

    def __init__(self, o: dict[str, Any], boxes: TensorSpec, scores: TensorSpec, input_size: tuple[int, int]) -> None:
        if o["strides"] is None:
            raise ConfigError("postprocess type ssd needs strides (one per feature map) to make its anchors",
                              hint="e.g. strides: [8, 16, 16, 16], or use type blazeface for MediaPipe face models")
        self.o, self.boxes, self.scores = o, boxes, scores
        w, h = self.input_size = (int(input_size[0]), int(input_size[1]))
        self.anchors = ssd_anchors(w, h, **{k: o[k] for k in _ANCHOR_OPTIONS})
        self.scale = np.asarray([o["x_scale"] or w, o["y_scale"] or h, o["w_scale"] or w, o["h_scale"] or h],
                                np.float32)
        bb, sb = (None if t.shape is None else t.shape[1:] for t in (boxes, scores))
        n = next((s[-2] for s in (bb, sb) if s and len(s) >= 2 and isinstance(s[-2], int)), None)
        if n is not None and n != len(self.anchors):
            raise ConfigError(f"the anchor options give {len(self.anchors)} anchors but the model has {n} boxes "
                              f"({boxes.name} {boxes.shape_str()}, {scores.name} {scores.shape_str()})",
                              hint="check strides, num_layers and aspect_ratios")
        self.coords = bb[-1] if bb and isinstance(bb[-1], int) else None
        self.classes = sb[-1] if sb and isinstance(sb[-1], int) else None
        k = o["num_keypoints"]
        if k is None:
            k = max(0, (self.coords - 4) // 2) if self.coords is not None else None
        elif self.coords is not None and self.coords < 4 + 2 * k:
            raise ConfigError(f"{k} keypoints need {4 + 2 * k} values per box but {boxes.name} has {self.coords}",
                              hint="set num_keypoints to fit the model")
        self.keypoints = k

    def decode(self, raw: np.ndarray, logits: np.ndarray, score_threshold: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Boxes [M, 4] x1, y1, x2, y2 and keypoints [M, K, 2] (None when K is 0) in model-input pixels, with the
        scores and class ids of the boxes scoring at least `score_threshold`. raw: [N, 4+2K], logits: [N, C]."""
        n, o = len(self.anchors), self.o
        if raw.ndim < 2 or raw.size != n * raw.shape[-1] or (self.coords and raw.shape[-1] != self.coords):
            raise MalformedOutput(f"output {self.boxes.name!r} has shape {list(raw.shape)}; expected [{n}, "
                                  f"{self.coords or '4+2K'}] (one item, no batch axis)")
        if logits.ndim < 1 or logits.size % n or (self.classes and logits.size != n * self.classes):
            raise MalformedOutput(f"output {self.scores.name!r} has shape {list(logits.shape)}; expected [{n}, "
                                  f"{self.classes or 'C'}] (one item, no batch axis)")
        raw, logits = raw.reshape(n, -1), logits.reshape(n, -1)
        k = self.keypoints if self.keypoints is not None else max(0, (raw.shape[1] - 4) // 2)
        if raw.shape[1] < 4 + 2 * k:
            raise MalformedOutput(f"output {self.boxes.name!r} has {raw.shape[1]} values per box; {k} keypoints "
                                  f"need {4 + 2 * k}")
        if o["sigmoid_score"]:
            t = o["score_clipping_thresh"]
            x = logits.clip(-t, t) if t else logits
            logits = 0.5 * (1 + np.tanh(0.5 * x))  # the sigmoid, without exp's overflow on large logits
        classes = logits.argmax(1)
        scores = logits[np.arange(n), classes]
        keep = scores >= score_threshold
        raw, anchors, scores, classes = raw[keep], self.anchors[keep], scores[keep], classes[keep]
        xy_order = o["box_order"] == "xywh"
        box = raw[:, :4] if xy_order else raw[:, [1, 0, 3, 2]]  # -> x, y, w, h
        centre = box[:, :2] / self.scale[:2] * anchors[:, 2:] + anchors[:, :2]
        size = box[:, 2:] / self.scale[2:]
        size = (np.exp(size) if o["apply_exponential_on_box_size"] else size) * anchors[:, 2:]
        kps = raw[:, 4:4 + 2 * k].reshape(len(raw), k, 2)
        if not xy_order:
            kps = kps[..., ::-1]
        kps = kps / self.scale[:2] * anchors[:, None, 2:] + anchors[:, None, :2]
        valid = (size >= 0).all(1)  # as MediaPipe: a negative size is no box
        px = np.asarray(self.input_size, np.float32)
        centre, size, kps = centre[valid] * px, size[valid] * px, kps[valid] * px
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        return boxes, scores[valid], classes[valid], kps if k else None


_BOX_HINTS, _SCORE_HINTS = ("box", "regress", "loc", "coord"), ("score", "class", "conf", "logit", "prob")


def match_ssd_outputs(outputs: list[TensorSpec], boxes_name: str | None, scores_name: str | None,
                      want: str) -> tuple[TensorSpec, TensorSpec]:
    """The (boxes, scores) outputs: as named, else by shape (boxes have 4+2K values), then name, then order."""
    by_name = {o.name: o for o in outputs}
    described = ", ".join(f"{o.name} {o.shape_str()}" for o in outputs)
    for field, name in (("boxes_output", boxes_name), ("scores_output", scores_name)):
        if name is not None and name not in by_name:
            raise ConfigError(f"postprocess.{field} {name!r} is not an output of the model ({described})")
    hint = "name them with postprocess.boxes_output and postprocess.scores_output"
    if (boxes_name is None or scores_name is None) and len(outputs) != 2:
        raise ConfigError(want, hint=hint)
    if boxes_name is None and scores_name is None:
        def fits(o: TensorSpec) -> bool:
            last = o.shape[-1] if o.shape else None
            return not isinstance(last, int) or (last >= 4 and (last - 4) % 2 == 0)

        def hinted(o: TensorSpec, hints: tuple[str, ...]) -> bool:
            return any(h in o.name.lower() for h in hints)

        a, b = outputs
        if not fits(a) and not fits(b):
            raise ConfigError(want, hint=hint)
        if fits(a) != fits(b):
            boxes = a if fits(a) else b
        else:
            boxes = b if hinted(b, _BOX_HINTS) or hinted(a, _SCORE_HINTS) else a  # MediaPipe's order: boxes first
        boxes_name, scores_name = boxes.name, (b if boxes is a else a).name
    elif boxes_name is None or scores_name is None:
        other = next(o.name for o in outputs if o.name not in (boxes_name, scores_name))
        boxes_name, scores_name = boxes_name or other, scores_name or other
    pair = by_name[boxes_name], by_name[scores_name]
    for spec in pair:
        body = spec.shape[1:] if spec.shape is not None else None
        if body is not None and (len(body) < 2 or any(d != 1 for d in body[:-2])):
            raise ConfigError(want, hint="choose the postprocess.type that matches the model's head")
    return pair
