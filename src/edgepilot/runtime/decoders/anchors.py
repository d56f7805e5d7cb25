"""SSD anchors as MediaPipe's SsdAnchorsCalculator makes them: one box prior per feature-map cell and aspect ratio."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgepilot.errors import ConfigError


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
