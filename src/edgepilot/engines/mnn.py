"""MNN engine (Alibaba's mobile runtime) on the CPU, through MNN's Module API."""
from __future__ import annotations

import logging

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session, default_threads
from edgepilot.errors import ModelError, RuntimeFailure, UnavailableError, first_line
from edgepilot.formats.mnn import import_mnn
from edgepilot.model import Format, Model

log = logging.getLogger(__name__)

# MNN's Python API names only these dtypes for the values it is fed.
_FEED_DTYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "int64", "int8": "int8",
                "uint8": "uint8"}
# MNN's "normal" precision may compute in fp16 (Armv8.2) or bf16; "high" keeps fp32, "low" allows fp16.
_MODES = {None: "high", "fp32": "high", "fp16": "low", "bf16": "low_bf16"}


class MNNSession(Session):
    def __init__(self, model: Model, threads: int, precision: str | None):
        mnn = import_mnn()
        self._F = mnn.expr
        self.threads = int(threads)
        self.precision = precision or "fp32"
        self.inputs, self.outputs = model.inputs, model.outputs
        layouts = model.meta.get("input_layouts", {})
        self._layout = {t.name: self._F.NHWC if layouts.get(t.name) == "NHWC" else self._F.NCHW
                        for t in model.inputs}
        defaults = model.meta.get("default_input_shapes", {})
        # A model whose batch cannot be resized (a reshape constant holds it) runs in chunks of this.
        self._default_batch = {t.name: d[0] if len(d := defaults.get(t.name) or []) >= 2 else 0
                               for t in model.inputs}
        self._dtype = {}
        for t in model.inputs:
            if t.dtype not in _FEED_DTYPES:
                raise UnavailableError(f"MNN's Python API cannot feed {t.dtype} input {t.name!r}")
            self._dtype[t.name] = getattr(self._F, _FEED_DTYPES[t.dtype])
        # An explicit runtime manager: without one MNN ignores thread_num and starts 4 threads.
        self._runtime = mnn.nn.create_runtime_manager(({"backend": 0, "numThread": self.threads,
                                                          "precision": _MODES[precision]},))
        try:
            self._module = mnn.nn.load_module_from_file(
                str(model.path), [t.name for t in model.inputs], [t.name for t in model.outputs],
                runtime_manager=self._runtime, shape_mutable=True)
        except Exception as e:
            raise ModelError(f"{model.path}: MNN cannot load it ({e})") from e
        if self._module is None:
            raise ModelError(f"{model.path}: MNN cannot load it")
        self._chunked = False

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._chunked:
            try:
                return self._forward(feeds)
            except RuntimeFailure:
                if not self._can_chunk(feeds):
                    raise
                log.info("MNN could not resize the batch; running in chunks of the model's batch instead")
                self._chunked = True
        return self._forward_chunks(feeds)

    def _forward(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        F = self._F
        try:
            args = [F.const(np.ascontiguousarray(feeds[t.name]), list(feeds[t.name].shape),
                            self._layout[t.name], self._dtype[t.name]) for t in self.inputs]
            results = self._module.forward(args)
            if not isinstance(results, (list, tuple)):
                results = [results]
            out = {}
            for spec, var in zip(self.outputs, results):
                if var.data_format == F.NC4HW4:  # MNN's packed internal layout: unpack to NCHW
                    var = F.convert(var, F.NCHW)
                # read() aliases MNN's buffer, which the next call overwrites
                out[spec.name] = np.array(var.read(), copy=True)
        except Exception as e:
            raise RuntimeFailure(f"MNN failed: {first_line(e) if str(e) else type(e).__name__}") from e
        if len(out) != len(self.outputs):
            raise RuntimeFailure(f"MNN returned {len(out)} outputs where the model declares {len(self.outputs)}")
        return out

    def _can_chunk(self, feeds: dict[str, np.ndarray]) -> bool:
        sizes = {feeds[t.name].shape[0] if feeds[t.name].ndim else 0 for t in self.inputs}
        chunks = set(self._default_batch.values())
        return len(sizes) == 1 and len(chunks) == 1 and 0 < next(iter(chunks)) and \
            next(iter(sizes)) % next(iter(chunks)) == 0

    def _forward_chunks(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._can_chunk(feeds):
            raise RuntimeFailure(f"this MNN model runs only in batches of {set(self._default_batch.values())}")
        step = next(iter(self._default_batch.values()))
        total = next(iter(feeds.values())).shape[0]
        parts = [self._forward({k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, total, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def close(self) -> None:
        self._module = None
        self._runtime = None


class MNNEngine(Engine):
    name = "mnn"
    formats = frozenset({Format.MNN})
    package = "MNN"
    extra = "mnn"

    @classmethod
    def _check(cls) -> tuple[bool, str]:
        mnn = import_mnn()  # quietly: a plain import prints to stdout
        return True, f"MNN {getattr(mnn, 'version', lambda: '')()}".strip()

    @classmethod
    def extra_dist(cls) -> str:
        return "mnn"  # the distribution is lower-case; the module is upper-case

    def _open(self, model: Model, opts: EngineOptions) -> Session:
        if opts.device != "cpu":
            raise UnavailableError(f"the MNN engine runs on the CPU only, not {opts.device!r}",
                                   hint="MNN's GPU backends need an MNN build with them")
        return MNNSession(model, opts.threads or default_threads(), opts.precision)
