"""The SSD decoder: MediaPipe's box and keypoint decoding over anchors, and the matching of the (boxes, scores) pair."""
from __future__ import annotations

from typing import Any

import numpy as np

from edgepilot.errors import ConfigError
from edgepilot.model import TensorSpec
from edgepilot.runtime.decoders.anchors import ssd_anchors
from edgepilot.runtime.decoders.base import Decoder, MalformedOutput, describe
from edgepilot.runtime.decoders.config import PostprocessConfig
from edgepilot.runtime.item import FrameTransform, Result

# What an unset SSD option means for type "ssd" (MediaPipe's defaults); "blazeface" takes its preset instead.
SSD_DEFAULTS: dict[str, Any] = {
    "num_layers": None, "strides": None, "min_scale": 0.1484375, "max_scale": 0.75, "anchor_offset_x": 0.5,
    "anchor_offset_y": 0.5, "aspect_ratios": [1.0], "interpolated_scale_aspect_ratio": 1.0,
    "reduce_boxes_in_lowest_layer": False, "fixed_anchor_size": False, "x_scale": None, "y_scale": None,
    "w_scale": None, "h_scale": None, "apply_exponential_on_box_size": False, "box_order": "yxhw",
    "num_keypoints": None, "sigmoid_score": False, "score_clipping_thresh": None, "nms": "hard",
}


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


class SsdDecoder(Decoder):
    """Any SSD head, configured with MediaPipe's anchor and decoding options (`strides` at least)."""

    name = "ssd"

    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        preset = self.preset(*input_size)
        super().__init__(cfg, input_size, labels if labels is not None else preset.get("labels"))
        o = {k: getattr(cfg, k) if getattr(cfg, k) is not None else preset.get(k, v) for k, v in SSD_DEFAULTS.items()}
        self.nms_kind = o["nms"]
        if "iou_threshold" not in cfg.model_fields_set:
            self.iou_threshold = preset.get("iou_threshold", cfg.iou_threshold)
        want = (f"{cfg.type} expects two outputs, boxes [1, N, 4+2K] (box, then K keypoints) and scores [1, N, C]"
                "; the model has " + describe(outputs))
        boxes, scores = match_ssd_outputs(outputs, cfg.boxes_output, cfg.scores_output, want)
        self.head = SsdHead(o, boxes, scores, input_size)

    @classmethod
    def preset(cls, input_w: int, input_h: int) -> dict[str, Any]:
        """Options (and labels, iou_threshold) a named model family brings; unset config fields take them."""
        return {}

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        raw, logits = self.array(outputs, self.head.boxes), self.array(outputs, self.head.scores)
        boxes, scores, classes, kps = self.head.decode(raw, logits, self.cfg.score_threshold)
        return self.finish(boxes, scores, classes, kps, transform)

    def check(self, outputs: dict[str, np.ndarray]) -> None:
        super().check(outputs)
        logits = self.array(outputs, self.head.scores).reshape(len(self.head.anchors), -1)
        where = f"output {self.head.scores.name!r}"
        self.check_labels(logits.shape[1], where)
        if not self.head.o["sigmoid_score"]:
            self.check_scores(logits, where, hint="set sigmoid_score: true if the model outputs logits")
