"""LiteRT (ai-edge-litert, formerly TensorFlow Lite) interpreter engine."""
from __future__ import annotations

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session, default_threads
from edgepilot.errors import ModelError, RuntimeFailure, first_line
from edgepilot.model import Format, Model
from edgepilot.optional import require


class LiteRTSession(Session):
    def __init__(self, model: Model, threads: int):
        interp_mod = require("ai_edge_litert.interpreter", "tflite")
        try:
            self._it = interp_mod.Interpreter(model_path=str(model.path), num_threads=threads)
            self.threads = threads
            self._it.allocate_tensors()
        except Exception as e:
            raise ModelError(f"{model.path}: LiteRT cannot load it ({first_line(e)})") from e
        self.inputs, self.outputs = model.inputs, model.outputs
        self._in = [(d["name"], d["index"]) for d in self._it.get_input_details()]
        self._out = [(d["name"], d["index"]) for d in self._it.get_output_details()]
        self._shapes = {idx: tuple(d["shape"]) for d, (_, idx) in zip(self._it.get_input_details(), self._in)}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self._it
        resized = False
        for name, idx in self._in:
            shape = feeds[name].shape
            if self._shapes[idx] != shape:  # a new batch size: resize once, then reuse
                it.resize_tensor_input(idx, shape)
                self._shapes[idx] = shape
                resized = True
        try:
            if resized:
                it.allocate_tensors()
            for name, idx in self._in:
                it.set_tensor(idx, feeds[name])
            it.invoke()
        except Exception as e:
            raise RuntimeFailure(f"LiteRT failed: {first_line(e)}") from e
        # get_tensor copies, so the result stays valid after the next invoke.
        return {name: it.get_tensor(idx) for name, idx in self._out}


class LiteRTEngine(Engine):
    name = "litert"
    formats = frozenset({Format.TFLITE})
    package = "ai_edge_litert"
    extra = "tflite"

    @classmethod
    def extra_dist(cls) -> str:
        return "ai-edge-litert"

    def _open(self, model: Model, opts: EngineOptions) -> Session:
        # XNNPACK computes float models in fp32 on the CPU (fp16 weights are dequantised at load).
        return LiteRTSession(model, opts.threads or default_threads())
