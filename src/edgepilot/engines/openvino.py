"""OpenVINO runtime engine (CPU here; GPU/NPU devices where the plugins find hardware)."""
from __future__ import annotations

import numpy as np

from edgepilot.engines.base import Engine, Session
from edgepilot.errors import ModelError, RuntimeFailure, UnavailableError
from edgepilot.model import Format, Model
from edgepilot.optional import require


class OpenVINOSession(Session):
    def __init__(self, model: Model, threads: int | None, device: str, cache_dir: str | None = None):
        ov = require("openvino", "openvino")
        core = ov.Core()
        dev = device.upper()
        if dev not in core.available_devices:
            raise UnavailableError(f"OpenVINO has no {device!r} device here",
                                   hint=f"available: {', '.join(core.available_devices)}")
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir:
            config["CACHE_DIR"] = cache_dir
        try:
            self._compiled = core.compile_model(str(model.path), dev, config)
        except Exception as e:
            raise ModelError(f"{model.path}: OpenVINO cannot load it ({str(e).splitlines()[0]})") from e
        self._request = self._compiled.create_infer_request()
        self.inputs, self.outputs = model.inputs, model.outputs
        self._out_ports = list(self._compiled.outputs)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._request.infer(feeds)
        except Exception as e:
            raise RuntimeFailure(f"OpenVINO failed: {str(e).splitlines()[0]}") from e
        # Results alias the request's buffers: copy so they survive the next call.
        return {spec.name: np.array(result[port]) for spec, port in zip(self.outputs, self._out_ports)}


class OpenVINOEngine(Engine):
    name = "openvino"
    formats = frozenset({Format.OPENVINO, Format.ONNX})
    package = "openvino"
    extra = "openvino"
    devices = ("cpu", "gpu", "npu")
    caches_compiled = True

    def open(self, model: Model, *, threads: int | None = None, device: str = "cpu",
             cache_dir: str | None = None) -> Session:
        return OpenVINOSession(model, threads, device, cache_dir)
