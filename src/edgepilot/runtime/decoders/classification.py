"""The classification decoder: one score vector to the top-k classes, with softmax only where the scores are logits."""
from __future__ import annotations

import numpy as np

from edgepilot.errors import ConfigError
from edgepilot.model import TensorSpec
from edgepilot.runtime.decoders.base import Decoder, MalformedOutput, body, describe, pick_one
from edgepilot.runtime.decoders.config import PostprocessConfig
from edgepilot.runtime.item import FrameTransform, Result


class ClassificationDecoder(Decoder):
    name = "classification"
    kind = "classification"

    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        super().__init__(cfg, input_size, labels)
        want = "classification expects an output [1, C]"
        self.spec = pick_one(cfg, outputs, want, strict=False)
        shape = body(self.spec)
        self.classes: int | None = None
        if shape is not None:
            if len(shape) == 0 or sum(1 for d in shape if d != 1) > 1:
                raise ConfigError(f"{want}; the model has {describe(outputs)}",
                                  hint="choose another postprocess.type, or postprocess.output")
            if all(isinstance(d, int) and d > 0 for d in shape):
                self.classes = int(np.prod(shape))

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        x = self.array(outputs, self.spec).reshape(-1)
        if x.size == 0 or (self.classes is not None and x.size != self.classes):
            raise MalformedOutput(f"output {self.spec.name!r} has {x.size} values; expected {self.classes}")
        p = self.probabilities(x)
        k = min(self.cfg.top_k, p.size)
        top = np.argpartition(-p, k - 1)[:k]
        top = top[np.argsort(-p[top], kind="stable")]
        return Result(kind="classification", classes=[(int(i), self.label(int(i)), float(p[i])) for i in top])

    def check(self, outputs: dict[str, np.ndarray]) -> None:
        super().check(outputs)
        x = self.array(outputs, self.spec).reshape(-1)
        self.check_labels(x.size, f"output {self.spec.name!r}")
        if self.cfg.softmax == "never":
            self.check_scores(x, f"output {self.spec.name!r}", hint="set postprocess.softmax to auto: the outputs "
                                                                     "are logits")

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        mode = self.cfg.softmax
        if x.size == 1:  # a one-unit head is a sigmoid score: softmax would always say 1
            return x if mode == "never" or 0 <= x[0] <= 1 else 1 / (1 + np.exp(-x))
        if mode == "never" or (mode == "auto" and x.min() >= -1e-6 and abs(float(x.sum()) - 1) <= 1e-2):
            return x
        e = np.exp(x - x.max())
        return e / e.sum()
