"""Preprocessing: a frame (or sensor values) to the model's input tensor, with what is needed to map results back.

Everything that can be read off the model is: input size, layout (NHWC/NCHW), channels, dtype, and the scale/zero
point of int8/uint8 inputs. What cannot (the value range the model was trained on, colour order, letterbox vs
stretch) is configured, with defaults that suit most image models (RGB, 0..1, stretch). Float inputs are made in
one native call (blobFromImage), 8-bit ones with at most one table lookup: no float arithmetic in Python per frame.
"""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgepilot.engines.base import quantize
from edgepilot.errors import ConfigError
from edgepilot.model import TensorSpec
from edgepilot.runtime.item import FrameTransform, Item

log = logging.getLogger(__name__)

_RANGES = {  # name -> (mean, std) applied to 0..255 pixels
    "0-1": ([0.0], [255.0]),
    "-1-1": ([127.5], [127.5]),
    "0-255": ([0.0], [1.0]),
    "imagenet": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
}


class PreprocessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resize: Literal["stretch", "letterbox", "crop"] = Field(
        "stretch", description="stretch to the input size; letterbox keeps the aspect ratio and pads; crop takes the "
                               "centre at the input's aspect ratio")
    color: Literal["rgb", "bgr", "gray"] = Field("rgb", description="channel order the model was trained on")
    normalize: Literal["0-1", "-1-1", "0-255", "imagenet"] = Field(
        "0-1", description="value range of float inputs (and of the float values quantised for int8/uint8 inputs)")
    mean: list[float] | None = Field(None, description="per-channel mean on 0..255 pixels; overrides normalize")
    std: list[float] | None = Field(None, description="per-channel std on 0..255 pixels; overrides normalize")
    layout: Literal["auto", "nhwc", "nchw"] = Field("auto", description="auto: read from the input shape")
    size: tuple[int, int] | None = Field(None, description="width, height when the model's input size is dynamic")
    pad_value: int = Field(0, ge=0, le=255, description="letterbox padding (114 for YOLO models)")
    interpolation: Literal["linear", "area"] = Field(
        "linear", description="linear (what YOLO and MediaPipe use; ten times cheaper) or area (less aliasing when "
                              "shrinking a lot)")
    fields: list[str] | None = Field(None, description="sensor value names, in the order of the model's input "
                                                        "vector (sensor sources only)")

    @model_validator(mode="after")
    def _mean_std_together(self) -> PreprocessConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class Preprocessor:
    """`process(item)` sets item.tensor (no batch axis) and item.transform; an item it cannot use gets item.error."""

    def __init__(self, cfg: PreprocessConfig, spec: TensorSpec) -> None:
        self.cfg, self.spec = cfg, spec
        if spec.shape is None:
            raise ConfigError(f"model input {spec.name!r} has an unknown rank", hint="use a model with a known shape")
        self.vector = len(spec.shape) == 2
        if self.vector:
            self._plan_vector()
        else:
            self._plan_image()
        self.dtype = spec.np_dtype
        self.quantized = spec.quantization is not None and self.dtype.kind in "iu"
        if self.dtype.kind not in "fiu":
            raise ConfigError(f"model input {spec.name!r} is {spec.dtype}: not an image or a vector")
        self._pixels, self._lut = (False, None) if self.vector else self._plan_pixels()

    def _plan_pixels(self) -> tuple[bool, np.ndarray | None]:
        """For an 8-bit input: pixels go in as they are, or through one table lookup; no float on the way.

        The table holds what the float path gives each of the 256 values of every channel: normalised, then
        quantised with the model's scale and zero point (or clipped for an unquantised int8 input).
        """
        if self.dtype.itemsize != 1:
            return False, None
        k, q = self.channels, self.spec.quantization
        values = np.repeat(np.arange(256, dtype=np.float32)[:, None], k, axis=1)  # [256, channels]
        x = (values - self.mean) / self.std
        if self.quantized:
            scale, zp = np.asarray(q.scale, np.float32), np.asarray(q.zero_point, np.float32)
            if scale.size > 1 and (scale.size != k or q.axis != (3 if self.layout == "nhwc" else 1)):
                return False, None  # quantised along another axis than the channels
            info = np.iinfo(self.dtype)
            table = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(self.dtype)
        else:
            table = np.clip(np.round(x * self.std + self.mean), *_limits(self.dtype)).astype(self.dtype)
        table = table.view(np.uint8)
        if np.array_equal(table, values.astype(np.uint8)):
            return True, None  # the model takes raw pixels
        return True, np.ascontiguousarray(table.reshape(1, 256, k))

    def _plan_vector(self) -> None:
        n = self.spec.shape[1]
        if not self.cfg.fields:
            raise ConfigError(f"model input {self.spec.name!r} is a vector {self.spec.shape_str()}",
                              hint="list the sensor values it takes in preprocess.fields")
        if isinstance(n, int) and n > 0 and n != len(self.cfg.fields):
            raise ConfigError(f"preprocess.fields names {len(self.cfg.fields)} values but the model takes {n}")

    def _plan_image(self) -> None:
        shape = self.spec.shape
        if len(shape) != 4:
            raise ConfigError(f"model input {self.spec.name!r} has shape {self.spec.shape_str()}",
                              hint="pipelines take image models [N,H,W,C] / [N,C,H,W] or vector models [N,F]")
        layout = self.cfg.layout
        if layout == "auto":
            layout = "nhwc" if shape[3] in (1, 3, 4) else "nchw" if shape[1] in (1, 3, 4) else None
            if layout is None:
                raise ConfigError(f"cannot tell the layout of input {self.spec.name!r} {self.spec.shape_str()}",
                                  hint="set preprocess.layout to nhwc or nchw")
        self.layout = layout
        h, w, c = (shape[1], shape[2], shape[3]) if layout == "nhwc" else (shape[2], shape[3], shape[1])
        if not (isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0):
            if self.cfg.size is None:
                raise ConfigError(f"model input {self.spec.name!r} {self.spec.shape_str()} has a dynamic size",
                                  hint="set preprocess.size: [width, height]")
            w, h = self.cfg.size
        elif self.cfg.size is not None and tuple(self.cfg.size) != (w, h):
            raise ConfigError(f"preprocess.size {list(self.cfg.size)} differs from the model's input {w}x{h}")
        self.width, self.height = int(w), int(h)
        self.channels = c if isinstance(c, int) and c > 0 else (1 if self.cfg.color == "gray" else 3)
        if self.channels == 1 and self.cfg.color != "gray":
            log.info("model input %s has one channel: frames are converted to gray", self.spec.name)
        mean, std = (self.cfg.mean, self.cfg.std) if self.cfg.mean is not None else _RANGES[self.cfg.normalize]
        k = self.channels
        self.mean = np.resize(np.asarray(mean, np.float32), k)
        self.std = np.resize(np.asarray(std, np.float32), k)
        self._blob = self._blob_params() if k == 3 and self.cfg.color != "gray" else None

    def _blob_params(self):
        """OpenCV's blobFromImage does colour order, mean/std and layout in one native call (no float temporaries)."""
        import cv2

        p = cv2.dnn.Image2BlobParams()
        p.scalefactor = tuple(float(v) for v in 1.0 / self.std) + (0.0,)
        p.mean = tuple(float(v) for v in self.mean) + (0.0,)  # in output channel order, as the tensor's
        p.size = (self.width, self.height)
        p.swapRB = self.cfg.color == "rgb"
        p.datalayout = cv2.DNN_LAYOUT_NHWC if self.layout == "nhwc" else cv2.DNN_LAYOUT_NCHW
        return p

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.width, self.height) if not self.vector else (0, 0)

    def fed_shape(self) -> tuple[int, ...]:
        """What the scheduler feeds one item as (batch 1, or the model's fixed batch): warm-ups run at that size."""
        spec = self.spec
        if self.vector:
            fed = (1, len(self.cfg.fields or ()))
        else:
            c, h, w = self.channels, self.height, self.width
            fed = (1, h, w, c) if self.layout == "nhwc" else (1, c, h, w)
        if spec.shape is None or len(spec.shape) != len(fed):
            return fed
        return tuple(d if isinstance(d, int) and d >= 0 else f for d, f in zip(spec.shape, fed))

    def process(self, item: Item) -> Item:
        if self.vector:
            return self._vector(item)
        if item.frame is None:
            item.error = "no frame: this model takes images"
            return item
        import cv2

        frame = item.frame
        fh, fw = frame.shape[:2]
        img, transform = _resize(frame, self.width, self.height, self.cfg.resize, self.cfg.pad_value,
                                 cv2.INTER_LINEAR if self.cfg.interpolation == "linear" else cv2.INTER_AREA)
        item.transform = FrameTransform(*transform, frame_w=fw, frame_h=fh, input_w=self.width, input_h=self.height)
        if self._blob is not None and not self._pixels:
            item.tensor = self._cast(cv2.dnn.blobFromImageWithParams(np.ascontiguousarray(img), self._blob)[0])
            return item
        if self.channels == 1 or self.cfg.color == "gray":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None] if img.ndim == 3 else img[..., None]
            if self.channels == 3:
                img = np.repeat(img, 3, axis=2)
        elif self.cfg.color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if self._pixels:
            if self._lut is not None:
                img = cv2.LUT(img, self._lut).reshape(img.shape)
            x = img.view(self.dtype)
            item.tensor = np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "nchw" else x)
            return item
        x = (img.astype(np.float32) - self.mean) / self.std
        if self.layout == "nchw":
            x = x.transpose(2, 0, 1)
        item.tensor = self._cast(np.ascontiguousarray(x))
        return item

    def _vector(self, item: Item) -> Item:
        values = item.values or {}
        missing = [f for f in self.cfg.fields if f not in values]
        if missing:
            item.error = f"sensor values lack {', '.join(missing)}"
            return item
        item.tensor = self._cast(np.asarray([values[f] for f in self.cfg.fields], np.float32))
        return item

    def _cast(self, x: np.ndarray) -> np.ndarray:
        if self.quantized:  # the model's own scale and zero point, so int8 models see what they were calibrated on
            return quantize(x, self.spec)
        if self.dtype.kind in "iu":  # an unquantised integer input (a uint8 image model) takes raw pixels
            return np.clip(np.round(x * self.std + self.mean), *_limits(self.dtype)).astype(self.dtype)
        return x.astype(self.dtype, copy=False)


def _limits(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _resize(frame: np.ndarray, w: int, h: int, mode: str, pad: int, interpolation: int):
    """The resized frame and (scale_x, scale_y, pad_x, pad_y) mapping frame pixels into it."""
    import cv2

    fh, fw = frame.shape[:2]
    if mode == "stretch":
        return cv2.resize(frame, (w, h), interpolation=interpolation), (w / fw, h / fh, 0, 0)
    if mode == "letterbox":
        s = min(w / fw, h / fh)
        nw, nh = max(1, round(fw * s)), max(1, round(fh * s))
        px, py = (w - nw) // 2, (h - nh) // 2
        small = cv2.resize(frame, (nw, nh), interpolation=interpolation)
        out = cv2.copyMakeBorder(small, py, h - nh - py, px, w - nw - px, cv2.BORDER_CONSTANT, value=(pad,) * 4)
        return out, (s, s, px, py)
    # crop: scale so the input is covered, then take the centre
    s = max(w / fw, h / fh)
    nw, nh = max(w, round(fw * s)), max(h, round(fh * s))
    big = cv2.resize(frame, (nw, nh), interpolation=interpolation)
    ox, oy = (nw - w) // 2, (nh - h) // 2
    return big[oy:oy + h, ox:ox + w], (s, s, -ox, -oy)
