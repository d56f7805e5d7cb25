"""Load the pipeline's model once, open one warmed-up session per worker, and keep compiled artifacts in a cache
where the runtime has one (OpenVINO's model cache; TensorRT plans built from ONNX, keyed by model, TensorRT
version and GPU)."""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from edgepilot.engines import engine_for, open_session
from edgepilot.engines.base import Precision, Session
from edgepilot.errors import ConfigError
from edgepilot.evaluate.latency import synthetic_feeds
from edgepilot.model import Format, Model
from edgepilot.shapes import shapes_for, with_shapes

log = logging.getLogger(__name__)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    engine: str | None = Field(None, description="default: the first available engine that runs the format")
    device: str | None = Field(None, description="default: the engine's first device (cpu, or cuda for TensorRT)")
    precision: Precision | None = Field(None, description="fp32 (default), fp16 or bf16 on engines that choose "
                                                          "their arithmetic (OpenVINO, ncnn, MNN)")
    warmup: int = Field(3, ge=0, description="inferences run on each session before the first item")
    watch: bool = Field(True, description="when the model (or the pipeline file) was opened through a link, swap "
                                          "in the model it points to whenever that changes, without a restart")
    cache_dir: str | None = Field("cache", description="compiled-model cache (OpenVINO, TensorRT); null: none")
    input_shapes: dict[str, list[PositiveInt]] | None = Field(
        None, description="concrete shapes of dynamic inputs, e.g. {images: [1, 3, 640, 640]}; they set the "
                          "preprocess size (default: preprocess.size)")


def load_model(cfg: ModelConfig) -> Model:
    model = Model.load(cfg.path)
    if cfg.engine == "tensorrt" and model.format == Format.ONNX:
        model = _tensorrt_plan(model, Path(cfg.cache_dir or "cache"))
    if len(model.inputs) != 1:
        raise ConfigError(f"{cfg.path}: the model takes {len(model.inputs)} inputs "
                          f"({', '.join(t.name for t in model.inputs)})",
                          hint="pipelines run single-input models (one image or one sensor vector)")
    if cfg.input_shapes:
        model = with_shapes(model, {k: tuple(v) for k, v in cfg.input_shapes.items()})
    return model


def open_sessions(model: Model, cfg: ModelConfig, workers: int, threads: int,
                  warmup_shapes: dict[str, tuple[int, ...]] | None = None, spin_wait: bool | None = None
                  ) -> tuple[list[Session], float, dict[str, np.ndarray]]:
    """`workers` sessions, each warmed up at `warmup_shapes` (what the pipeline feeds); returns them, the seconds it
    took, and the outputs of one more call (batch axis kept), which the pipeline checks against its decoder."""
    t0 = time.perf_counter()
    engine = engine_for(model, cfg.engine)
    cache = None
    if cfg.cache_dir and engine.caches_compiled:
        cache = Path(cfg.cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        cache = str(cache)
    sessions = [open_session(model, engine.name, threads=threads, device=cfg.device, precision=cfg.precision,
                             cache_dir=cache, spin_wait=spin_wait)
                for _ in range(workers)]
    feeds = synthetic_feeds(sessions[0].inputs, shapes=shapes_for(sessions[0].inputs, warmup_shapes or {}))
    for s in sessions:
        for _ in range(cfg.warmup):
            s.run(feeds)
    probe = sessions[0].run(feeds)
    return sessions, time.perf_counter() - t0, probe


def _tensorrt_plan(model: Model, cache: Path) -> Model:
    """An ONNX model for TensorRT: build its plan once (fp16) and reuse it while the model, TensorRT and GPU stay
    the same — a build takes minutes on a Jetson."""
    from edgepilot.optional import require
    from edgepilot.passes import get_pass
    from edgepilot.passes.base import PassContext

    trt = require("tensorrt", "tensorrt")
    gpu = _gpu_name()
    digest = hashlib.sha256(model.path.read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(f"{digest}|{trt.__version__}|{gpu}".encode()).hexdigest()[:16]
    plan = cache / f"{model.path.stem}-{key}.plan"
    if not plan.exists():
        p, ctx = get_pass("onnx-to-tensorrt"), PassContext(cache / "build")
        reasons = p.why_not(model, ctx)
        if reasons:
            raise ConfigError(f"cannot build a TensorRT plan for {model.path}: {'; '.join(reasons)}")
        log.info("building a TensorRT plan for %s (cached as %s)", model.path.name, plan.name)
        built = p.run(model, p.Options(), ctx)
        shutil.move(str(built.path), plan)
    return Model.load(plan)


def _gpu_name() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    except Exception:  # no NVML (a Jetson): the plan key falls back to the TensorRT version alone
        return "unknown-gpu"
