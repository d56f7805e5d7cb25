"""Benchmark one model in a fresh subprocess: load time, latency, throughput, peak RSS, outside CPU load.

Each model runs in its own interpreter so that one runtime's memory and threads never count
against another's. The parent sends a BenchConfig as JSON and reads a BenchResult back from a file
(runtimes print to stdout, so stdout is not a safe channel).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
from pydantic import BaseModel, Field

from edgepilot.errors import EdgepilotError, RuntimeFailure, first_line
from edgepilot.evaluate.latency import LatencyStats, measure_latency, synthetic_feeds
from edgepilot.host import host_info


class BenchConfig(BaseModel, extra="forbid"):
    model: str
    engine: str | None = None
    threads: int | None = Field(None, ge=1)
    batch: int | None = Field(None, ge=1)  # None: the --shape's batch, else the model's fixed one, else 1
    runs: int | None = Field(None, ge=1)
    seconds: float | None = Field(None, gt=0)
    warmup: int = Field(10, ge=0)
    concurrency: int = Field(1, ge=1)
    device: str | None = None  # default: the engine's first device
    precision: str | None = None  # EngineOptions.precision: None computes float models in fp32 on every engine
    shapes: dict[str, list[int]] = Field(default_factory=dict)  # concrete shapes for dynamic inputs, by name


class BenchEnergy(BaseModel):
    """Energy during the timed runs, where a power source is readable (RAPL, INA sensors, tegrastats, NVML)."""

    source: str | None  # e.g. "rapl:package-0"; None when no source could be read
    scope: str  # what the figure covers (a CPU package counts every process), or why there is no figure
    joules: float | None = None  # over the whole measurement window (warm-up included)
    window_s: float | None = None
    mean_power_w: float | None = None
    per_inference_mj: float | None = None  # mean power x timed wall time / timed calls
    per_sample_mj: float | None = None  # per_inference_mj / batch


class BenchResult(BaseModel):
    model: str
    format: str
    engine: str
    engine_version: str | None
    threads: int | None  # what the runtime used (None where threads do not apply)
    precision: str = "as stored"  # the arithmetic the runtime used, as it reports it
    device: str
    load_ms: float
    latency: LatencyStats
    rss_before_load_mb: float
    peak_rss_mb: float
    outside_cpu_load_pct: float  # busy CPU not used by the benchmark, % of all cores, during the timed runs
    energy: BenchEnergy | None = None  # None only in results written before energy was measured
    host: str
    cpu_model: str
    timestamp: str


def benchmark(cfg: BenchConfig, timeout_s: float = 900) -> BenchResult:
    """Run the benchmark in a fresh `python -m edgepilot.evaluate.benchmark` process."""
    with tempfile.TemporaryDirectory(prefix="edgepilot-bench-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "edgepilot.evaluate.benchmark", str(out)],
                input=cfg.model_dump_json(), capture_output=True, text=True, timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeFailure(f"benchmark of {cfg.model} ran past {timeout_s:.0f} s") from e
        if not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeFailure(f"the benchmark process for {cfg.model} died (exit {proc.returncode})",
                                 hint=" | ".join(tail) or None)
        payload = json.loads(out.read_text())
    if "error" in payload:
        err = EdgepilotError(payload["error"], payload.get("hint"))
        err.__class__ = _ERRORS.get(payload.get("kind"), EdgepilotError)
        raise err
    return BenchResult.model_validate(payload)


def run_in_process(cfg: BenchConfig) -> BenchResult:
    """The measurement itself; called inside the fresh subprocess."""
    from edgepilot.engines import engine_for
    from edgepilot.model import Model

    me = psutil.Process()
    rss_before = me.memory_info().rss
    model = Model.load(cfg.model)
    engine_cls = engine_for(model, cfg.engine)
    engine = engine_cls()
    options = engine.options(threads=cfg.threads, device=cfg.device, precision=cfg.precision)
    device = options.device
    t0 = time.perf_counter()
    first = engine.open(model, options)
    load_ms = (time.perf_counter() - t0) * 1e3
    feeds = synthetic_feeds(first.inputs, cfg.batch, {k: tuple(v) for k, v in cfg.shapes.items()})
    batch = next((f.shape[0] for f in feeds.values() if f.ndim), 1)  # what each call really runs: the throughput
    pending = [first]

    def factory():
        return pending.pop() if pending else engine.open(model, options)

    meter, why_no_energy = _energy_meter(device)
    if meter is not None:
        meter.start()
    cpu0, self0 = psutil.cpu_times(), me.cpu_times()
    try:
        stats = measure_latency(factory, feeds, batch=batch, warmup=cfg.warmup, runs=cfg.runs,
                                seconds=cfg.seconds, concurrency=cfg.concurrency)
    finally:
        window = meter.stop() if meter is not None else None
    cpu1, self1 = psutil.cpu_times(), me.cpu_times()
    busy = _busy(cpu1) - _busy(cpu0)
    mine = (self1.user + self1.system) - (self0.user + self0.system)
    # a share of the host's CPU time over the same window, in the same clock-tick units as `busy`, bounded: the
    # kernel's tick counts and this process's own times are sampled a moment apart
    total = _total(cpu1) - _total(cpu0)
    outside = min(100.0, max(0.0, busy - mine) / total * 100) if total > 0 else 0.0
    host = host_info()
    return BenchResult(
        model=str(model.path), format=model.format.value, engine=engine_cls.name,
        engine_version=engine_cls.version(), threads=first.threads, precision=first.precision, device=device,
        load_ms=load_ms,
        latency=stats, rss_before_load_mb=rss_before / 2**20, peak_rss_mb=_peak_rss() / 2**20,
        outside_cpu_load_pct=round(outside, 2), energy=_energy(window, why_no_energy, stats),
        host=host.hostname, cpu_model=host.cpu_model,
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _energy_meter(device: str):
    """An energy meter for the timed runs, or None and why; energy is optional and never fails a benchmark."""
    try:
        from edgepilot.monitor.energy import open_energy_meter

        return open_energy_meter(device=device)
    except Exception as e:  # any failure here only costs the energy figure
        return None, f"energy meter failed: {e}"


def _energy(window, why: str, stats: LatencyStats) -> BenchEnergy:
    if window is None:
        return BenchEnergy(source=None, scope=f"unavailable: {why}")
    # warm-up runs inside the metered window, so the per-call figure is mean power x timed time, not J / calls
    per_call = window.mean_watts * stats.wall_s / stats.runs * 1e3 if stats.runs else None
    return BenchEnergy(source=window.source, scope=window.scope, joules=window.joules, window_s=window.seconds,
                       mean_power_w=window.mean_watts, per_inference_mj=per_call,
                       per_sample_mj=per_call / stats.batch if per_call is not None else None)


def _total(t) -> float:
    """All CPU time of the host, every state (guest time is already counted in user time on Linux)."""
    return sum(t) - getattr(t, "guest", 0) - getattr(t, "guest_nice", 0)


def _busy(t) -> float:
    return t.user + t.system + getattr(t, "nice", 0) + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def _peak_rss() -> int:
    """The process's high-water mark of resident memory (VmHWM), or the current RSS where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def _error_kinds() -> dict[str, type[EdgepilotError]]:
    from edgepilot import errors

    return {c.__name__: c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, EdgepilotError)}


_ERRORS = _error_kinds()


def _main(out_path: str) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        result = run_in_process(BenchConfig.model_validate_json(sys.stdin.read())).model_dump()
    except EdgepilotError as e:
        result = {"error": e.message, "hint": e.hint, "kind": type(e).__name__}
    except Exception as e:  # the parent prints one line, never "died (exit 1)" for a bug it could describe
        result = {"error": f"the benchmark failed: {type(e).__name__}: {first_line(e)}", "kind": "RuntimeFailure",
                  "hint": "run `edgepilot inspect` on the model, and report this if the model is valid"}
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
