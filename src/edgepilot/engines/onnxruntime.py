"""ONNX Runtime engine (CPU, or CUDA/TensorRT execution providers where onnxruntime-gpu has them)."""
from __future__ import annotations

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session, default_threads
from edgepilot.errors import ModelError, RuntimeFailure, UnavailableError, first_line
from edgepilot.model import Format, Model
from edgepilot.optional import require

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxRuntimeSession(Session):
    def __init__(self, model: Model, threads: int, device: str, spin_wait: bool | None = None):
        ort = require("onnxruntime", "onnx")
        provider = _PROVIDERS.get(device)
        if provider not in ort.get_available_providers():
            raise UnavailableError(f"onnxruntime has no {device!r} provider here",
                                   hint=f"available: {', '.join(ort.get_available_providers())}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if spin_wait is not None:  # spinning threads take the cores a decoder or post-processing needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        try:
            self._sess = ort.InferenceSession(str(model.path), opts, providers=[provider])
        except Exception as e:
            raise ModelError(f"{model.path}: onnxruntime cannot load it ({first_line(e)})") from e
        self.inputs, self.outputs = model.inputs, model.outputs
        self._output_names = [o.name for o in model.outputs]
        self._fail = RuntimeFailure

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._sess.run(self._output_names, feeds)
        except Exception as e:
            raise self._fail(f"onnxruntime failed: {first_line(e)}") from e
        return dict(zip(self._output_names, values))


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    formats = frozenset({Format.ONNX})
    package = "onnxruntime"
    extra = "onnx"
    devices = ("cpu", "cuda")

    def _open(self, model: Model, opts: EngineOptions) -> Session:
        # ONNX Runtime computes each operator in the type the model holds: `precision` does not apply.
        return OnnxRuntimeSession(model, opts.threads or default_threads(), opts.device, opts.spin_wait)
