"""What a model's outputs mean (its task), and how a variant's outputs agree with a reference's, per output.

The task — classification, detection, segmentation or generic tensors — is inferred from the outputs where
they make it obvious, or given (`--task`, `--postprocess`). It chooses the headline agreement metric that
the gates and `select` read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel

from edgepilot.errors import ConfigError
from edgepilot.evaluate.metrics.classification import topk_accuracy, topk_agreement
from edgepilot.evaluate.metrics.detection import decode, detection_score
from edgepilot.evaluate.metrics.segmentation import mask_iou
from edgepilot.evaluate.metrics.tensors import tensor_errors
from edgepilot.model import Model, TensorSpec
from edgepilot.runtime.decoders import DECODERS, PostprocessConfig

Task = Literal["classification", "detection", "segmentation", "tensors"]
TASKS: tuple[str, ...] = Task.__args__  # type: ignore[attr-defined]
# The headline agreement of each task: the number the gates read (1 = the reference's own outputs)
HEADLINE = {"classification": "top-1 agreement", "detection": "detection F1 at IoU 0.5",
            "segmentation": "mask IoU", "tensors": "cosine similarity"}
_DETECTORS = tuple(name for name, d in DECODERS.items() if d.kind == "detection")  # yolov5, yolov8, ssd, blazeface
_TASK_OF_KIND = {"classification": "classification", "detection": "detection", "raw": "tensors"}  # by Result kind


class OutputMetrics(BaseModel):
    """One output of a variant against the same output of the reference."""

    output: str
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float  # max abs error / the reference's largest magnitude
    sqnr_db: float | None  # None: exactly the reference's values
    cosine: float
    top1_agreement: float | None = None  # classification outputs
    top5_agreement: float | None = None
    mask_iou: float | None = None  # segmentation outputs


class Agreement(BaseModel):
    """How a variant's outputs agree with the reference's on the same inputs."""

    task: Task
    metric: str  # the headline's name, e.g. "top-1 agreement"
    value: float  # the headline: 1 = the reference's own answers, 0 = none of them
    precision: float | None = None  # detection: the variant's boxes against the reference's at IoU 0.5
    recall: float | None = None
    f1: float | None = None
    map50: float | None = None
    outputs: list[OutputMetrics] = []


@dataclass
class TaskSpec:
    """The task of a model and what scoring it needs: the decoder config and input size for detection."""

    task: Task
    outputs: list[TensorSpec]  # the reference's outputs: the names every variant's outputs are matched to
    postprocess: PostprocessConfig | None = None
    input_size: tuple[int, int] | None = None  # (width, height) of an image input
    inferred: bool = True

    def describe(self) -> str:
        how = "inferred from the outputs" if self.inferred else "given"
        dec = f", {self.postprocess.type} decoder" if self.postprocess is not None else ""
        return f"{self.task}{dec} ({how})"


def image_size(spec: TensorSpec) -> tuple[int, int] | None:
    """(width, height) of an NHWC or NCHW image input; None where the input is not one or its size is dynamic."""
    s = spec.shape
    if s is None or len(s) != 4:
        return None
    h, w = (s[1], s[2]) if s[3] in (1, 3, 4) else (s[2], s[3])
    return (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None


def _dims(spec: TensorSpec) -> tuple | None:
    return None if spec.shape is None else tuple(d if isinstance(d, int) and d > 0 else None for d in spec.shape)


def infer_decoder(outputs: list[TensorSpec]) -> str | None:
    """A detector's decoder where the output shapes say it plainly: BlazeFace/SSD pairs, a YOLOv8 head."""
    shapes = [_dims(o) for o in outputs]
    if len(shapes) == 2 and all(s is not None and len(s) == 3 for s in shapes):
        (_, n1, a), (_, n2, b) = sorted(shapes, key=lambda s: -(s[2] or 0))
        if n1 is not None and n1 == n2 and a is not None and b is not None and a >= 4 and (a - 4) % 2 == 0:
            return "blazeface" if (a, b) == (16, 1) else "ssd"
    if len(shapes) == 1 and shapes[0] is not None and len(shapes[0]) == 3:
        _, c, n = shapes[0]
        if c is not None and n is not None and 5 <= c < n and n >= 1000:  # [1, 4 + classes, anchors]
            return "yolov8"
    return None


def infer_task(model: Model) -> Task:
    """detection where a decoder fits, classification for [N, C] outputs, segmentation for a map of the input's
    size, else generic tensors."""
    if infer_decoder(model.outputs):
        return "detection"
    shapes = [_dims(o) for o in model.outputs]
    if shapes and all(s is not None and len(s) == 2 and (s[1] is None or s[1] >= 2) for s in shapes):
        return "classification"
    size = image_size(model.inputs[0]) if model.inputs else None
    for s in shapes:
        if size is not None and s is not None and len(s) in (3, 4):
            hw = s[1:3] if len(s) == 3 else (s[2:4] if s[1] is not None and s[1] <= min(size) else s[1:3])
            if tuple(hw) == (size[1], size[0]):
                return "segmentation"
    return "tensors"


def ran_at(model: Model, sample: tuple[int, ...], outputs: dict[str, np.ndarray]) -> Model:
    """`model` as it ran: its first input at the `sample` shape (batch 1), every dynamic output at the shape
    it gave (batch 1). A model with dynamic H/W says its task and decoder only at a concrete size."""
    from dataclasses import replace

    def concrete(spec: TensorSpec, shape: tuple[int, ...] | None) -> TensorSpec:
        return spec if spec.is_static or shape is None else replace(spec, shape=(1, *shape[1:]))

    got = {k: np.shape(v) for k, v in outputs.items()}
    by_order = list(got.values())
    inputs = [concrete(s, tuple(sample)) if i == 0 else s for i, s in enumerate(model.inputs)]
    outs = [concrete(s, got.get(s.name, by_order[i] if i < len(by_order) else None))
            for i, s in enumerate(model.outputs)]
    return replace(model, inputs=inputs, outputs=outs)


def resolve(model: Model, task: str | None = None, postprocess: PostprocessConfig | None = None) -> TaskSpec:
    """The task of `model`'s outputs: the one given, else inferred; ConfigError where a detector lacks a decoder."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}", hint=f"choose from {', '.join(TASKS)}")
    given = task is not None or postprocess is not None
    if task is None and postprocess is not None:
        task = _TASK_OF_KIND[DECODERS[postprocess.type].kind]
    task = task or infer_task(model)
    size = image_size(model.inputs[0]) if model.inputs else None
    if task == "detection":
        if postprocess is None:
            kind = infer_decoder(model.outputs)
            if kind is None:
                raise ConfigError("detection needs a decoder and none fits the outputs "
                                  + ", ".join(f"{o.name} {o.shape_str()}" for o in model.outputs),
                                  hint=f"give --postprocess ({', '.join(_DETECTORS)}) or a postprocess: mapping")
            postprocess = PostprocessConfig(type=kind)
        if postprocess.type not in _DETECTORS:
            raise ConfigError(f"task detection needs a detection decoder, not {postprocess.type!r}",
                              hint=f"choose from {', '.join(_DETECTORS)}")
        if size is None:
            raise ConfigError(f"detection needs an image input of fixed size; {model.inputs[0].name} is "
                              f"{model.inputs[0].shape_str()}", hint="give --shape for its dynamic dims")
    return TaskSpec(task, list(model.outputs), postprocess if task == "detection" else None, size, not given)


def align(outputs: dict[str, np.ndarray], spec: TaskSpec, reference: dict[str, np.ndarray] | None = None
          ) -> dict[str, np.ndarray]:
    """A variant's outputs under the reference's names: by name where they all match, else in order — or, where
    `reference` is given and the order does not fit its shapes, by shape.

    Converters rename outputs (TFLite, OpenVINO, ncnn do); most keep their order."""
    names = [o.name for o in spec.outputs]
    if set(names) <= set(outputs):
        return {n: outputs[n] for n in names}
    if len(outputs) != len(names):
        raise ConfigError(f"the variant has {len(outputs)} outputs where the reference has {len(names)}")
    by_order = dict(zip(names, outputs.values()))
    if reference is None or all(by_order[n].shape == reference[n].shape for n in names):
        return by_order
    left = list(outputs.values())
    by_shape = {}
    for n in names:
        match = next((k for k, a in enumerate(left) if a.shape == reference[n].shape), None)
        if match is None:
            return by_order  # score() names the shape that differs
        by_shape[n] = left.pop(match)
    return by_shape


def score(spec: TaskSpec, outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Agreement:
    """The variant's outputs against the reference's (both aligned to spec.outputs), per output and for the task."""
    per = []
    for name, ref in reference.items():
        out = outputs[name]
        if out.shape != ref.shape:
            raise ConfigError(f"output {name} has shape {list(out.shape)} where the reference has {list(ref.shape)}")
        m = OutputMetrics(output=name, **tensor_errors(out, ref))
        if spec.task == "classification":
            m.top1_agreement, m.top5_agreement = topk_agreement(out, ref, 1), topk_agreement(out, ref, 5)
        elif spec.task == "segmentation" and ref.ndim in (3, 4):
            m.mask_iou = mask_iou(out, ref)
        per.append(m)
    a = Agreement(task=spec.task, metric=HEADLINE[spec.task], value=0.0, outputs=per)
    if spec.task == "detection":
        d = detection_score(decode(spec.postprocess, spec.outputs, spec.input_size, outputs),
                            decode(spec.postprocess, spec.outputs, spec.input_size, reference))
        a.precision, a.recall, a.f1, a.map50, a.value = d.precision, d.recall, d.f1, d.map50, d.f1
    else:
        key = {"classification": "top1_agreement", "segmentation": "mask_iou", "tensors": "cosine"}[spec.task]
        values = [getattr(m, key) for m in per if getattr(m, key) is not None]
        a.value = max(0.0, min(values)) if values else 0.0  # the worst output: every one must agree
    return a


def label_accuracy(spec: TaskSpec, outputs: dict[str, np.ndarray], labels: np.ndarray | None
                   ) -> tuple[float | None, float | None]:
    """Top-1 and top-5 accuracy against class labels, for a classifier (its first output)."""
    if labels is None or spec.task != "classification":
        return None, None
    first = outputs[spec.outputs[0].name]
    return topk_accuracy(first, labels, 1), topk_accuracy(first, labels, 5)
