"""The raw decoder: the model's outputs passed through as they are (all of them, or postprocess.output)."""
from __future__ import annotations

import numpy as np

from edgepilot.model import TensorSpec
from edgepilot.runtime.decoders.base import Decoder, MalformedOutput, pick_one
from edgepilot.runtime.decoders.config import PostprocessConfig
from edgepilot.runtime.item import FrameTransform, Result


class RawDecoder(Decoder):
    name = "raw"
    kind = "raw"

    def __init__(self, cfg: PostprocessConfig, outputs: list[TensorSpec], input_size: tuple[int, int],
                 labels: list[str] | None) -> None:
        super().__init__(cfg, input_size, labels)
        self.spec = pick_one(cfg, outputs, "raw needs an output", strict=False) if cfg.output else None

    def decode(self, outputs: dict[str, np.ndarray], transform: FrameTransform | None) -> Result:
        names = [self.spec.name] if self.spec is not None else list(outputs)
        missing = [n for n in names if n not in outputs]
        if missing:
            raise MalformedOutput(f"output {missing[0]!r} is missing (got {', '.join(outputs) or 'none'})")
        return Result(kind="raw", raw={n: np.asarray(outputs[n]) for n in names})  # as they are, NaN included
