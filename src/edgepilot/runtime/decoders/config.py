"""The postprocess config: which decoder reads a model's outputs, with its labels, thresholds, NMS and SSD options."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class PostprocessConfig(SsdOptions):
    """How a model's outputs become a Result. The SSD anchor and decoding fields come from SsdOptions."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["classification", "yolov5", "yolov8", "ssd", "blazeface", "raw"] = Field(
        ..., description="how to read the outputs; blazeface is an ssd preset derived from the input size")
    labels: list[str] | None = Field(None, description="class names by id; detections default to class<N>")
    labels_file: str | None = Field(None, description="a text file with one label per line (instead of labels)")
    output: str | None = Field(None, description="the output to read (classification, yolo, raw) when there are "
                                                 "several")
    top_k: int = Field(5, ge=1, description="classification: how many classes to report")
    softmax: Literal["auto", "always", "never"] = Field(
        "auto", description="classification: auto applies softmax unless the outputs already are probabilities")
    score_threshold: float = Field(0.5, ge=0, le=1, description="detections scoring lower are dropped")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="NMS overlap above which the lower score goes "
                                                                "(blazeface: 0.3 unless set)")
    max_detections: int = Field(100, ge=1, description="at most this many detections per item")
    class_aware: bool = Field(True, description="NMS per class: boxes of different classes never suppress each other")
    nms: Literal["hard", "weighted"] | None = Field(
        None, description="hard: greedy NMS; weighted: each kept box is the score-weighted mean of its cluster, as "
                          "MediaPipe does. Default: weighted for blazeface, hard otherwise")

    @model_validator(mode="after")
    def _check(self) -> PostprocessConfig:
        if self.labels is not None and self.labels_file is not None:
            raise ValueError("give labels or labels_file, not both")
        if self.num_layers is not None and self.strides is not None and self.num_layers != len(self.strides):
            raise ValueError(f"num_layers is {self.num_layers} but {len(self.strides)} strides are given")
        return self
