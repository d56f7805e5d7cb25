"""Probation after a commit: the runtime reports its health into the agent's folder, the agent judges it.

    STATE/health/runtime.json   written by the runtime (`EDGEPILOT_HEALTH_DIR=STATE/health`): which slot and
                                version it runs, starts and crashes of that model, p95 inference latency, error
                                rate and the mean top-1 confidence of its results
    STATE/probation.json        written by the agent: the model on probation, the baseline (the previous model's
                                last health), the thresholds, and the decision once taken

The probation lives outside state.json on purpose: edgepilot-update.path reloads the runtime whenever state.json
changes, and a probation that passes must not touch it. The runtime swaps a committed or rolled-back model in place
(runtime/model_watch.py): the report then describes the new model from the swap on, and a swap is neither a start
nor a crash. A crash is a start of the runtime whose previous run on the same model never ended cleanly (killed,
or exited with an error).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)
HEALTH_ENV = "EDGEPILOT_HEALTH_DIR"
HEALTH_FILE = "runtime.json"
PROBATION_FILE = "probation.json"


class Thresholds(BaseModel):
    """When a model on probation is rolled back (recorded with every decision)."""

    model_config = ConfigDict(extra="forbid")
    window_s: float = Field(600.0, gt=0, description="how long the committed model is watched")
    max_crashes: int = Field(3, ge=1, description="runtime crashes on the new model that roll it back")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="failed / attempted inferences")
    max_p95_ratio: float = Field(3.0, gt=1, description="p95 inference latency against the previous model's")
    p95_slack_ms: float = Field(2.0, ge=0, description="added to the ratio's limit: tiny models jitter in µs")
    max_confidence_shift: float = Field(0.15, gt=0, le=1, description="|mean top-1 confidence - the previous|")
    min_samples: int = Field(50, ge=1, description="results needed before latency, errors or confidence count")


class Probation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: str
    version: int
    started: float  # epoch seconds
    thresholds: Thresholds
    baseline: dict | None = None  # the previous model's last health report
    decision: dict | None = None  # {"verdict": "passed"|"rolled back", "reason", "observed", "at"}


# -- the runtime's side ------------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_health(folder: Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / HEALTH_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except (OSError, TypeError, ValueError):
        return False
    return True


class RuntimeHealth:
    """What `edgepilot run` writes for the agent: created at start (before the model loads, so a model that kills
    the runtime while loading is still counted), refreshed with each statistics tick, closed on a clean exit."""

    def __init__(self, folder: Path, pipeline_yaml: Path) -> None:
        folder = Path(folder)
        self.path, self._failed = folder / HEALTH_FILE, False
        self._lock = threading.Lock()  # the stats tick and a model swap write from two threads
        self._counted = (0, 0)  # inferred, errors at the swap to the model reported (the counters run on)
        who = _identity(Path(pipeline_yaml).resolve().parent)  # through the agent's `current` link: the slot
        old = read_health(folder) or {}
        same = old.get("pipeline") == who["pipeline"] and old.get("version") == who["version"]
        unclean = same and old.get("running") and not pid_alive(old.get("pid"))
        self.data = {**who, "pid": os.getpid(), "running": True,
                     "starts": old.get("starts", 0) + 1 if same else 1,
                     "crashes": old.get("crashes", 0) + (1 if unclean else 0) if same else 0,
                     "started_at": time.time(), "updated_at": time.time(), "inferred": 0, "errors": 0,
                     "error_rate": 0.0, "p95_infer_ms": None, "confidence_mean": None, "confidence_n": 0,
                     "swaps": 0, "swap_failures": 0, "last_swap": None, "swap_error": None}
        self._write()

    def swapped(self, event: dict, snapshot: dict) -> None:
        """A model swapped in place (`event` ok), or a changed one refused: neither a start nor a crash. A swap to
        another slot's model starts that model's report afresh (starts 0: it was never started, only swapped in)."""
        with self._lock:
            d = self.data
            if event.get("restart"):  # the new slot's pipeline needs a restart: the next start reports it
                d["restarting"] = {k: event.get(k) for k in ("model", "reason", "at")}
                self._write()
                return
            if not event.get("ok"):  # the slot and version refused, so the probation of that version sees it
                d["swap_failures"] += 1
                who = _identity(Path(event["pipeline_dir"])) if event.get("pipeline_dir") else {}
                d["swap_error"] = {"slot": who.get("slot"), "version": who.get("version"),
                                   **{k: event.get(k) for k in ("model", "reason", "at")}}
                self._write()
                return
            who = _identity(Path(event["pipeline_dir"])) if event.get("pipeline_dir") else None
            if who is not None and (who["pipeline"], who["version"]) != (d["pipeline"], d["version"]):
                d.update(who, starts=0, crashes=0, started_at=time.time())
            c = snapshot.get("counters", {})
            self._counted = (int(c.get("inferred", 0)), int(c.get("errors", 0)))
            d["swaps"] += 1
            d["last_swap"] = {k: event.get(k) for k in ("model", "previous", "reason", "at")}
            d["swap_error"] = None
        self.update(snapshot)

    def _write(self) -> None:
        """A health report that cannot be written never stops the runtime (the agent then sees none)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(self.path, self.data)
        except OSError as e:
            if not self._failed:
                log.warning("cannot write the health report %s (%s): probation sees no health", self.path, e)
            self._failed = True

    def update(self, snapshot: dict) -> None:
        c = snapshot.get("counters", {})
        with self._lock:
            inferred = max(0, int(c.get("inferred", 0)) - self._counted[0])  # since the model reported came in
            errors = max(0, int(c.get("errors", 0)) - self._counted[1])
            conf = snapshot.get("confidence") or {}
            self.data.update(updated_at=time.time(), inferred=inferred, errors=errors,
                             error_rate=round(errors / max(1, inferred + errors), 6),
                             p95_infer_ms=(snapshot.get("stages_ms", {}).get("infer") or {}).get("p95"),
                             confidence_mean=conf.get("mean"), confidence_n=conf.get("n", 0))
            self._write()

    def stop(self, snapshot: dict | None = None) -> None:
        if snapshot is not None:
            self.update(snapshot)
        with self._lock:
            self.data["running"] = False
            self._write()


def _identity(where: Path) -> dict:
    """Which model a pipeline folder holds: the folder, its slot (under the agent's slots/) and manifest version."""
    version = None
    try:
        version = json.loads((where / "manifest.json").read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        pass
    return {"pipeline": str(where), "slot": where.name if where.parent.name == "slots" else None, "version": version}


# -- the agent's side ---------------------------------------------------------------------------------------------
def load(root: Path) -> Probation | None:
    path = Path(root) / PROBATION_FILE
    if not path.exists():
        return None
    try:
        return Probation.model_validate_json(path.read_bytes())
    except ValueError:
        return None  # only a foreign hand writes a broken one (it is renamed into place): no probation


def save(state_dir, probation: Probation) -> None:
    """Crash-safely, through the agent's persistence points."""
    state_dir.write_bytes(state_dir.root / PROBATION_FILE, probation.model_dump_json(indent=2).encode())


def baseline_for(health_dir: Path, slot: str | None, version: int | None) -> dict | None:
    """The health report of the model in `slot` at `version` (the one an update replaces), if the runtime wrote one."""
    h = read_health(health_dir)
    return h if h and slot and h.get("slot") == slot and h.get("version") == version else None


def crashes(health: dict) -> int:
    """Crashes counted at the runtime's restarts, plus the run in the file if it died without closing it."""
    n = int(health.get("crashes", 0))
    if health.get("running") and not pid_alive(health.get("pid")):
        n += 1
    return n


def judge(p: Probation, health: dict | None, now: float | None = None) -> tuple[str, str, dict]:
    """("breach" | "passed" | "watching", the reason, what was observed) for the model on probation."""
    now = time.time() if now is None else now
    t = p.thresholds
    mine = health is not None and health.get("slot") == p.slot and health.get("version") == p.version
    observed: dict = {"elapsed_s": round(now - p.started, 1), "reported": mine}
    refused = (health or {}).get("swap_error") or {}
    if not mine and refused.get("slot") == p.slot and refused.get("version") == p.version:
        observed["refused"] = refused.get("reason")  # the running runtime kept the previous model
        return "breach", f"the runtime refused to swap in v{p.version}: {refused.get('reason')}", observed
    if mine:
        observed |= {k: health.get(k) for k in ("starts", "inferred", "error_rate", "p95_infer_ms",
                                                "confidence_mean", "confidence_n")}
        observed["crashes"] = n = crashes(health)
        if n >= t.max_crashes:
            return "breach", f"the runtime crashed {n} time(s) on v{p.version} (max {t.max_crashes})", observed
        base = p.baseline or {}
        if (health.get("inferred") or 0) + (health.get("errors") or 0) >= t.min_samples:
            if health.get("error_rate", 0) > t.max_error_rate:
                return "breach", (f"error rate {health['error_rate']:.3f} > {t.max_error_rate} on "
                                  f"v{p.version}"), observed
            new_p95, old_p95 = health.get("p95_infer_ms"), base.get("p95_infer_ms")
            if new_p95 is not None and old_p95 is not None and new_p95 > old_p95 * t.max_p95_ratio + t.p95_slack_ms:
                return "breach", (f"p95 inference {new_p95:.3f} ms > {t.max_p95_ratio} x {old_p95:.3f} ms + "
                                  f"{t.p95_slack_ms} ms (the previous model)"), observed
        new_c, old_c = health.get("confidence_mean"), base.get("confidence_mean")
        if (new_c is not None and old_c is not None and (health.get("confidence_n") or 0) >= t.min_samples
                and (base.get("confidence_n") or 0) >= t.min_samples):
            observed["confidence_shift"] = shift = round(abs(new_c - old_c), 6)
            if shift > t.max_confidence_shift:
                return "breach", (f"mean top-1 confidence moved {old_c:.3f} -> {new_c:.3f} (shift {shift:.3f} > "
                                  f"{t.max_confidence_shift}) against the previous model"), observed
    if now - p.started >= t.window_s:
        how = "healthy" if mine else "no health reported by the runtime"
        return "passed", f"v{p.version} completed {t.window_s:g} s of probation ({how})", observed
    return "watching", "", observed
