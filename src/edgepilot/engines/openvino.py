"""OpenVINO runtime engine (CPU here; GPU/NPU devices where the plugins find hardware)."""
from __future__ import annotations

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session, default_threads
from edgepilot.errors import ModelError, RuntimeFailure, UnavailableError, first_line
from edgepilot.model import Format, Model
from edgepilot.optional import require

# OpenVINO's CPU plugin computes "fp32" models in bf16 where the CPU has it (AVX512_BF16, AMX) and in fp16 on
# some Arm cores unless told: the hint is always set, so a variant runs at the precision it claims.
_HINTS = {None: "f32", "fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}


class OpenVINOSession(Session):
    def __init__(self, model: Model, threads: int, device: str, precision: str | None, cache_dir: str | None):
        ov = require("openvino", "openvino")
        core = ov.Core()
        dev = device.upper()
        if dev not in core.available_devices:
            raise UnavailableError(f"OpenVINO has no {device!r} device here",
                                   hint=f"available: {', '.join(core.available_devices)}")
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads),
                  "INFERENCE_PRECISION_HINT": _HINTS[precision]}
        if cache_dir:
            config["CACHE_DIR"] = cache_dir
        try:
            self._compiled = core.compile_model(str(model.path), dev, config)
        except Exception as e:
            raise ModelError(f"{model.path}: OpenVINO cannot load it ({first_line(e)})") from e
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS")) or threads
        used = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = _NAMES.get(used, used)
        self._request = self._compiled.create_infer_request()
        self.inputs, self.outputs = model.inputs, model.outputs
        self._out_ports = list(self._compiled.outputs)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._request.infer(feeds)
        except Exception as e:
            raise RuntimeFailure(f"OpenVINO failed: {first_line(e)}") from e
        # Results alias the request's buffers: copy so they survive the next call.
        return {spec.name: np.array(result[port]) for spec, port in zip(self.outputs, self._out_ports)}


class OpenVINOEngine(Engine):
    name = "openvino"
    formats = frozenset({Format.OPENVINO, Format.ONNX})
    package = "openvino"
    extra = "openvino"
    devices = ("cpu", "gpu", "npu")
    caches_compiled = True

    def _open(self, model: Model, opts: EngineOptions) -> Session:
        return OpenVINOSession(model, opts.threads or default_threads(), opts.device, opts.precision,
                               opts.cache_dir)
