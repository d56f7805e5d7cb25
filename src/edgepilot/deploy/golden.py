"""Golden samples (inputs + reference outputs) and the trial that re-checks a bundle's gates on this machine."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepilot.engines import open_session
from edgepilot.engines.base import Session
from edgepilot.errors import BundleError, EdgepilotError, InputError
from edgepilot.model import Model

log = logging.getLogger(__name__)
MIN_TIMED_RUNS = 20  # p95 of fewer runs is the maximum


def make_inputs(model: Model, samples: int, given: Path | None = None) -> list[dict[str, np.ndarray]]:
    """Golden inputs: the first `samples` rows of an .npz of arrays named by input (real data), else seeded
    synthetic feeds of one sample each (a regression check of the arithmetic, not of accuracy)."""
    if given is not None:
        with np.load(given, allow_pickle=False) as npz:
            missing = [t.name for t in model.inputs if t.name not in npz.files]
            if missing:
                raise InputError(f"{given}: no array for input {missing[0]!r}", hint=f"it holds {npz.files}")
            arrays = {t.name: npz[t.name] for t in model.inputs}
        n = min(samples, *(len(a) for a in arrays.values()))
        return [{k: a[i:i + 1] for k, a in arrays.items()} for i in range(n)]
    from edgepilot.evaluate.latency import synthetic_feeds

    return [synthetic_feeds(model.inputs, batch=1, seed=i) for i in range(samples)]


def save(path: Path, inputs: list[dict], outputs: list[dict]) -> None:
    arrays = {f"in/{i}/{k}": v for i, s in enumerate(inputs) for k, v in s.items()}
    arrays |= {f"out/{i}/{k}": v for i, s in enumerate(outputs) for k, v in s.items()}
    with path.open("wb") as f:
        np.savez(f, **arrays)


def load(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and reference outputs; never unpickles (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            found: dict[str, dict[int, dict[str, np.ndarray]]] = {"in": {}, "out": {}}
            for key in npz.files:
                kind, i, name = key.split("/", 2)
                found[kind].setdefault(int(i), {})[name] = npz[key]
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{path}: unreadable golden samples ({e})") from e
    n = len(found["in"])
    if n == 0 or sorted(found["in"]) != list(range(n)) or sorted(found["out"]) != list(range(n)):
        raise BundleError(f"{path}: golden inputs and outputs do not pair up")
    return [found["in"][i] for i in range(n)], [found["out"][i] for i in range(n)]


def run_all(session: Session, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v) for k, v in session.run(s).items()} for s in inputs]


@dataclass
class TrialResult:
    """What the trial measured and which gates it breached ([] = every gate passed)."""

    breaches: list[str] = field(default_factory=list)
    agreement: float | None = None
    metric: str = ""
    p95_ms: float | None = None
    memory_mb: float | None = None

    @property
    def ok(self) -> bool:
        return not self.breaches

    def to_dict(self) -> dict:
        return {"ok": self.ok, "breaches": self.breaches, "agreement": self.agreement, "metric": self.metric,
                "p95_ms": self.p95_ms, "memory_mb": self.memory_mb}


def trial(model_path: Path, golden_path: Path, task: str, gates, engine: str | None = None,
          warmup: int = 3) -> TrialResult:
    """Load and warm the model, re-run the golden samples and measure the gates here. A model that fails to
    load or run is a breach with its reason, never an exception."""
    import psutil

    from edgepilot.evaluate import tasks

    result = TrialResult()
    try:
        inputs, reference = load(golden_path)
        model = Model.load(model_path)
        with open_session(model, engine) as session:
            for _ in range(warmup):
                session.run(inputs[0])
            outputs = run_all(session, inputs)
            result.p95_ms = _p95_ms(session, inputs)
        result.memory_mb = psutil.Process().memory_info().rss / 2**20
        spec = tasks.resolve(model, task)
        aligned = [tasks.align(o, spec, r) for o, r in zip(outputs, reference)]
        names = reference[0].keys()
        agreement = tasks.score(spec, {n: np.concatenate([a[n] for a in aligned]) for n in names},
                                {n: np.concatenate([r[n] for r in reference]) for n in names})
        result.agreement, result.metric = agreement.value, agreement.metric
    except EdgepilotError as e:
        result.breaches.append(f"the model does not run here: {e}")
        return result
    except Exception as e:  # a runtime's own failure on this model: a reason to roll back, not to crash
        log.exception("trial of %s failed", model_path)
        result.breaches.append(f"the model does not run here: {type(e).__name__}: {e}")
        return result
    if gates.min_agreement is not None and result.agreement < gates.min_agreement:
        result.breaches.append(f"golden samples: {result.metric} {result.agreement:.4f} < {gates.min_agreement}")
    if gates.max_p95_ms is not None and result.p95_ms > gates.max_p95_ms:
        result.breaches.append(f"latency p95 {result.p95_ms:.3f} ms > {gates.max_p95_ms} ms")
    if gates.max_memory_mb is not None and result.memory_mb > gates.max_memory_mb:
        result.breaches.append(f"memory {result.memory_mb:.1f} MB > {gates.max_memory_mb} MB")
    return result


def _p95_ms(session: Session, inputs: list[dict]) -> float:
    times = []
    while len(times) < max(MIN_TIMED_RUNS, len(inputs)):
        for s in inputs:
            t0 = time.perf_counter()
            session.run(s)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 95))
