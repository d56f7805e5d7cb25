"""ncnn engine (Tencent's mobile runtime) on the CPU: one extractor per sample, since blobs have no batch."""
from __future__ import annotations

import logging

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session, default_threads
from edgepilot.errors import InputError, ModelError, RuntimeFailure, UnavailableError
from edgepilot.model import Format, Model
from edgepilot.optional import require

log = logging.getLogger(__name__)


class NcnnSession(Session):
    def __init__(self, model: Model, threads: int, fp16: bool):
        ncnn = require("ncnn", "ncnn")
        self._ncnn = ncnn
        self.inputs, self.outputs = model.inputs, model.outputs
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = int(threads)
        if not fp16:  # ncnn's own default is fp16 storage/arithmetic wherever the CPU can (F16C, ARMv8.2)
            for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
                setattr(net.opt, flag, False)
        weights = model.path.with_suffix(".bin")
        unknown = sorted({t for t in model.meta.get("layer_types", []) if ncnn.layer_to_index(t) < 0})
        if unknown:  # pnnx leaves operators it cannot map under their own names
            raise ModelError(f"{model.path}: this ncnn build has no layer type {', '.join(unknown)}",
                             hint="the converter left these operators unconverted; simplify the model "
                                  "or register custom layers")
        if net.load_param(str(model.path)) != 0:
            raise ModelError(f"{model.path}: ncnn cannot load it (a layer's parameters are malformed)")
        if net.load_model(str(weights)) != 0:
            raise ModelError(f"{weights}: ncnn cannot load the weights (truncated, or not this model's)")
        self._net = net
        self.threads = net.opt.num_threads
        # ncnn stores (and on Armv8.2 computes) in fp16 only where the CPU has the instructions for it
        self.precision = "fp16" if fp16 and (ncnn.cpu_support_arm_asimdhp() or _has_f16c()) else "fp32"
        missing = [t.name for t in model.inputs if t.name not in net.input_names()]
        missing += [t.name for t in model.outputs if t.name not in net.output_names() + net.input_names()
                    and not any(b.name == t.name for b in net.blobs())]
        if missing:
            raise ModelError(f"{model.path}: ncnn finds no blob named {missing[0]!r}")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._net is None:
            raise RuntimeFailure("this ncnn session is closed")
        sizes = {feeds[t.name].shape[0] if feeds[t.name].ndim else -1 for t in self.inputs}
        if len(sizes) != 1 or -1 in sizes:
            raise InputError(f"every input needs the same leading batch dimension; got sizes {sorted(sizes)}")
        batch = sizes.pop()
        per_sample = [self._sample({k: v[i] for k, v in feeds.items()}) for i in range(batch)]
        if not per_sample:
            return {t.name: np.zeros((0,), np.float32) for t in self.outputs}
        return {t.name: np.stack([s[t.name] for s in per_sample]) for t in self.outputs}

    def _sample(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ncnn = self._ncnn
        ex = self._net.create_extractor()
        for name, x in feeds.items():
            if not 1 <= x.ndim <= 4:
                raise InputError(f"ncnn takes 1 to 4 dimensions per sample; input {name!r} has {x.ndim}")
            # clone: a Mat over numpy memory has no refcount, and ncnn's in-place layers (a ReLU
            # right after the input) dereference it and crash; the clone also outlives `x`.
            mat = ncnn.Mat(np.ascontiguousarray(x, dtype=np.float32)).clone()
            if ex.input(name, mat) != 0:
                raise RuntimeFailure(f"ncnn refused input {name!r}")
        out = {}
        for spec in self.outputs:
            ret, mat = ex.extract(spec.name)
            if ret != 0:
                raise RuntimeFailure(f"ncnn failed to compute {spec.name!r} (error {ret})")
            # np.array(mat) copies: the Mat's memory goes with the extractor
            out[spec.name] = np.array(mat)
        return out

    def close(self) -> None:
        if self._net is not None:
            self._net.clear()
            self._net = None


class NcnnEngine(Engine):
    name = "ncnn"
    formats = frozenset({Format.NCNN})
    package = "ncnn"
    extra = "ncnn"

    def _open(self, model: Model, opts: EngineOptions) -> Session:
        """ncnn's fp16 storage and arithmetic only with precision="fp16": fp32 otherwise."""
        if opts.device != "cpu":
            raise UnavailableError(f"the ncnn engine runs on the CPU only, not {opts.device!r}",
                                   hint="ncnn's Vulkan GPU path is not wired into edgepilot")
        if opts.precision == "bf16":
            raise UnavailableError("the ncnn engine computes in fp32 or fp16, not bf16")
        return NcnnSession(model, opts.threads or default_threads(), opts.precision == "fp16")


def _has_f16c() -> bool:
    from edgepilot.host import cpu_flags

    return "f16c" in cpu_flags()
