"""TensorFlow Lite for Microcontrollers (tflite-micro) engine: MCU kernels and arena accounting on the host.

TFLM is what runs on a microcontroller, so running a model here answers two questions an MCU
target asks: does every op have a TFLM kernel, and how many bytes of tensor arena does it need.
The runtime is single-threaded and cannot resize inputs: `threads` is ignored, and a batch larger
than the model's (batch-1) input runs as a loop over samples.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgepilot.engines.base import Engine, EngineOptions, Session
from edgepilot.errors import ConfigError, InputError, ModelError, RuntimeFailure, UnavailableError, first_line
from edgepilot.model import Format, Model, Quantization, TensorSpec
from edgepilot.optional import require

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ARENA = 4 << 20  # first try when no size is given; grown on demand up to MAX_ARENA
MAX_ARENA = 256 << 20
_TOO_SMALL = re.compile(r"Failed to (allocate|resize)|missing: \d+")
_NO_KERNEL = re.compile(r"Didn't find op|Failed to get registration|not supported|Unsupported", re.IGNORECASE)
ALIGN = 16  # TFLM aligns arena allocations to 16 bytes: measure in those steps
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_stderr_lock = threading.Lock()


def _capture_stderr(fn: Callable[[], T]) -> tuple[T | None, str, BaseException | None]:
    """Call `fn` with file descriptor 2 redirected: TFLM reports errors and arena use only there.

    Returns (result, captured text, exception). The redirect is process-wide, so it is kept to
    the few calls that need it and serialised with a lock.
    """
    with _stderr_lock, tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            try:
                result, error = fn(), None
            except Exception as e:  # noqa: BLE001 - returned, for the caller to judge with the text
                result, error = None, e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    if text.strip():
        log.debug("tflite-micro said: %s", text.strip())
    return result, text, error


def _first_line(text: str, error: BaseException | None) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else (first_line(error) if error and str(error) else "unknown error")


def _interpreter(data: bytes, path: Path, arena_size: int | None) -> tuple[Any, int]:
    """A TFLM interpreter with its tensors allocated, and the arena size it was given.

    With no `arena_size`, start at DEFAULT_ARENA and grow while allocation fails: the host has
    memory to spare, and what the model needs is measured separately (measure_arena). A given
    `arena_size` is first tried in a child process, because an arena just short of the need
    can crash TFLM instead of failing cleanly.
    """
    runtime = require("tflite_micro", "micro").runtime
    if arena_size is not None and not _fits(path, arena_size):
        raise ConfigError(f"{path}: a tensor arena of {arena_size} bytes is too small for this model",
                          hint="give a larger arena_size; edgepilot.engines.micro.measure_arena() "
                               "finds the smallest that works")
    size = arena_size or DEFAULT_ARENA
    while True:
        it, text, error = _capture_stderr(lambda n=size: runtime.Interpreter.from_bytes(data, arena_size=n))
        if error is None:
            return it, size
        allocating = isinstance(error, RuntimeError) and "allocate" in str(error)  # not a parse error
        if allocating and arena_size is None and size < MAX_ARENA and not _NO_KERNEL.search(text):
            size *= 4
            continue
        if _TOO_SMALL.search(text) and not _NO_KERNEL.search(text):
            raise ModelError(f"{path}: TFLite Micro could not allocate it in a {size}-byte arena "
                             f"({_first_line(text, error)})", hint="the model is far too large for a microcontroller")
        raise ModelError(f"{path}: TFLite Micro cannot load it ({_first_line(text, error)})",
                         hint="TFLM has fewer kernels than LiteRT; an op it lacks needs the model "
                              "rebuilt from supported ops (int8 builtins)") from error


# Runs in a child process: answers "ok"/"no" for each arena size read from stdin.
_PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash here is an answer, not a core file
from tflite_micro import runtime
data = open(sys.argv[1], "rb").read()
for line in sys.stdin:
    try:
        runtime.Interpreter.from_bytes(data, arena_size=int(line))
        print("ok", flush=True)
    except Exception:
        print("no", flush=True)
"""


class _Prober:
    """Asks a child process whether an arena size works, so that a TFLM crash costs only the child."""

    def __init__(self, path: Path):
        self.path = path
        self._proc: subprocess.Popen | None = None

    def fits(self, size: int) -> bool:
        for _ in range(2):  # a crashed child is restarted once, to tell a crash from a broken setup
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(self.path)], text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL)
            try:
                self._proc.stdin.write(f"{size}\n")
                self._proc.stdin.flush()
                answer = self._proc.stdout.readline().strip()
            except (BrokenPipeError, OSError):
                answer = ""
            if answer:
                return answer == "ok"
            crashed = self._proc.wait()
            self._proc = None
            if crashed < 0:  # killed by a signal: TFLM crashed on this size, which is too small
                log.debug("tflite-micro crashed (signal %d) with a %d-byte arena", -crashed, size)
                return False
        raise RuntimeFailure(f"{self.path}: the TFLite Micro probe process failed to start",
                             hint="check that `python -c 'import tflite_micro'` works")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()  # the child's loop ends on EOF
            self._proc.wait(timeout=10)
        self._proc = None


def _fits(path: Path, size: int) -> bool:
    with closing(_Prober(path)) as prober:
        return prober.fits(size)


def _spec(name: str, details: dict[str, Any]) -> TensorSpec:
    q = details.get("quantization_parameters") or {}
    scales = [float(s) for s in np.asarray(q.get("scales", []))]
    quant = None
    if scales:
        zps = [int(z) for z in np.asarray(q.get("zero_points", []))] or [0] * len(scales)
        quant = Quantization(tuple(scales), tuple(zps), int(q.get("quantized_dimension", 0)))
    shape = tuple(int(d) for d in np.asarray(details["shape"]))
    return TensorSpec(name, np.dtype(details["dtype"]).name, shape, quant)


def _details(get: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every input's (or output's) details: TFLM has no count, so probe until IndexError."""
    out = []
    while True:
        try:
            out.append(get(len(out)))
        except IndexError:
            return out


class MicroSession(Session):
    def __init__(self, model: Model, arena_size: int | None = None):
        try:
            data = model.path.read_bytes()
        except OSError as e:
            raise ModelError(f"{model.path}: cannot read it ({e.strerror})") from e
        self._path = model.path
        self._it, self.arena_size = _interpreter(data, model.path, arena_size)
        self._arena_used: int | None = None
        # Probing past the last index makes TFLM print a complaint: keep it off the terminal.
        found, _, error = _capture_stderr(lambda: (_details(self._it.get_input_details),
                                                   _details(self._it.get_output_details)))
        if error is not None:
            raise ModelError(f"{model.path}: TFLite Micro cannot describe its tensors ({error})") from error
        in_details, out_details = found
        # The TFLite describer reads names from the flatbuffer; TFLM itself knows only indices.
        self.inputs = model.inputs or [_spec(f"input_{i}", d) for i, d in enumerate(in_details)]
        self.outputs = model.outputs or [_spec(f"output_{i}", d) for i, d in enumerate(out_details)]
        if len(self.inputs) != len(in_details) or len(self.outputs) != len(out_details):
            raise ModelError(f"{model.path}: the interpreter has {len(in_details)} inputs and "
                             f"{len(out_details)} outputs, the model description "
                             f"{len(self.inputs)} and {len(self.outputs)}")
        self._shapes = [tuple(int(d) for d in np.asarray(d["shape"])) for d in in_details]

    @property
    def arena_used_bytes(self) -> int:
        """Tensor-arena bytes TFLM holds after allocation (head + tail), as its RecordingMicroAllocator reports.

        Cheap, but a floor: kernels also take temporary arena memory while they prepare, so the
        smallest arena that works is a little larger. Fit checks want measure_arena().
        """
        if self._arena_used is None:
            _, text, error = _capture_stderr(self._it.print_allocations)
            m = _TOTAL.search(text)
            if error is not None or m is None:
                raise RuntimeFailure(f"{self._path}: TFLite Micro did not report its arena use "
                                     f"({_first_line(text, error)})")
            self._arena_used = int(m.group(1))
        return self._arena_used

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [feeds[spec.name] for spec in self.inputs]
        batches = {a.shape[0] if a.ndim else 1 for a in arrays}
        model_batch = {s[0] if s else 1 for s in self._shapes}
        if len(batches) != 1:
            raise InputError(f"inputs have different batch sizes {sorted(batches)}")
        batch = batches.pop()
        if {batch} == model_batch:
            return dict(zip(self._names_out(), self._invoke(arrays)))
        if model_batch != {1}:
            raise InputError(f"this model takes a batch of {sorted(model_batch)}, got {batch}",
                             hint="TFLite Micro cannot resize inputs; feed the model's own batch size")
        # TFLM cannot resize a tensor: run each sample alone and stack the results.
        per_sample = [self._invoke([a[i:i + 1] for a in arrays]) for i in range(batch)]
        return {name: _join([outs[k] for outs in per_sample]) for k, name in enumerate(self._names_out())}

    def _names_out(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        it = self._it
        for i, (a, want) in enumerate(zip(arrays, self._shapes)):
            if a.shape != want:
                raise InputError(f"input {self.inputs[i].name!r} must have shape {list(want)} for "
                                 f"TFLite Micro, got {list(a.shape)}",
                                 hint="TFLM cannot resize inputs; only the batch may vary, one sample at a time")
            it.set_input(np.ascontiguousarray(a), i)
        try:
            it.invoke()
        except Exception as e:  # TFLM prints the failing node to stderr and raises RuntimeError
            raise RuntimeFailure(f"TFLite Micro failed: {first_line(e) if str(e) else e!r}") from e
        # get_output returns a fresh array per call, so results survive the next invoke.
        return [it.get_output(k) for k in range(len(self.outputs))]


def _join(parts: list[np.ndarray]) -> np.ndarray:
    # An output with a leading batch of 1 is concatenated; one without a batch axis gains one.
    if all(p.ndim and p.shape[0] == 1 for p in parts):
        return np.concatenate(parts, axis=0)
    return np.stack(parts, axis=0)


class MicroOptions(EngineOptions):
    arena_size: int | None = None  # bytes of tensor arena; None finds one that fits


class MicroEngine(Engine):
    """TFLite Micro on the host. `arena_size` (bytes) fixes the tensor arena; None finds one that fits."""

    name = "tflite-micro"
    formats = frozenset({Format.TFLITE})
    package = "tflite_micro"
    extra = "micro"
    Options = MicroOptions

    def __init__(self, arena_size: int | None = None):
        self.arena_size = arena_size

    @classmethod
    def extra_dist(cls) -> str:
        return "tflite-micro"

    def _open(self, model: Model, opts: MicroOptions) -> MicroSession:
        if opts.device != "cpu":
            raise UnavailableError(f"TFLite Micro runs on the CPU only, not {opts.device!r}", hint="use device='cpu'")
        if opts.threads and opts.threads > 1:
            log.debug("tflite-micro is single-threaded; ignoring threads=%d", opts.threads)
        session = MicroSession(model, opts.arena_size or self.arena_size)
        session.threads = 1
        return session


def measure_arena(model_path: str | Path) -> int:
    """The smallest tensor arena, in bytes (a multiple of 16), with which TFLite Micro allocates the model.

    TFLM's own count (arena_used_bytes) is a floor: kernels also take temporary memory while they
    prepare. So search upwards from it, asking child processes (a too-small arena can crash TFLM),
    and confirm the answer in a fresh one. Measured on this 64-bit host; a 32-bit MCU needs the
    same activation memory and slightly smaller bookkeeping structs, so this is a safe bound.
    """
    path = Path(model_path)
    model = Model(path=path, format=Format.TFLITE, inputs=[], outputs=[], files=[path])
    with MicroSession(model) as session:
        floor = session.arena_used_bytes
    with closing(_Prober(path)) as prober:
        lo, step = floor - 1, max(ALIGN, floor // 16)  # lo: known too small; hi: known to fit
        hi = _align(floor)
        while not prober.fits(hi):
            lo, hi, step = hi, _align(hi + step), step * 2
            if hi > MAX_ARENA:
                raise RuntimeFailure(f"{path}: no tensor arena up to {MAX_ARENA} bytes worked in the probe")
        while hi - lo > ALIGN:
            mid = _align((lo + hi) // 2)
            if mid >= hi:
                break
            lo, hi = (lo, mid) if prober.fits(mid) else (mid, hi)
    # Failed probes ran in the same child: confirm in a fresh one that nothing earlier skewed the answer.
    if not _fits(path, hi):
        raise RuntimeFailure(f"{path}: TFLite Micro gave inconsistent answers for a {hi}-byte arena")
    return hi


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN
