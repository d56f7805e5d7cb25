"""Rollouts: the plan (canary, then cumulative waves), the canary-versus-control comparison, and the SQLite record
of every stage, decision and its numbers (what lets a restarted controller resume)."""
from __future__ import annotations

import json
import math
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgepilot.errors import ConfigError, NotFoundError

ACTIVE = ("running", "paused", "aborting", "rolling_back")
FINAL = ("promoted", "rolled_back", "aborted")


class Criteria(BaseModel):
    """When a wave's health counts as worse than the control's."""

    model_config = ConfigDict(extra="forbid")
    max_latency_ratio: float = Field(1.5, gt=1, description="canary p95 / control p95")
    min_latency_delta_ms: float = Field(1.0, ge=0, description="a p95 increase below this is noise, not a breach")
    max_error_rate_delta: float = Field(0.02, ge=0)
    max_confidence_shift: float = Field(0.1, ge=0, description="|mean top-1 confidence canary - control|")
    max_failed_fraction: float = Field(0.0, ge=0, le=1, description="devices whose install did not commit")
    min_reports: int = Field(2, ge=1, description="health reports per device within the window")


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str
    sha256: str
    target: str  # the repository path agents fetch
    device_class: str
    name: str
    version: int
    selector: dict[str, str] = {}
    canary_pct: float = Field(10, gt=0, le=100)
    waves: list[float] = [10, 50, 100]
    observe_s: float = Field(60, gt=0)
    install_timeout_s: float = Field(300, gt=0)
    criteria: Criteria = Criteria()

    @field_validator("waves")
    @classmethod
    def _cumulative(cls, waves: list[float]) -> list[float]:
        if not waves or any(not 0 < w <= 100 for w in waves) or waves != sorted(waves) or waves[-1] != 100:
            raise ValueError("waves are increasing percentages of the selected devices ending at 100")
        return waves


def percent(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise ConfigError(f"{text!r} is not a percentage", hint="e.g. 10%") from None
    return value


def plan(devices: list[str], canary_pct: float, waves: list[float]) -> list[list[str]]:
    """Stages of new devices: the canary (at least one), then each wave's cumulative share; empty waves dropped.
    Devices are ordered by id so a re-run plans the same stages."""
    ordered = sorted(devices)
    n = len(ordered)
    cuts = [max(1, math.ceil(n * canary_pct / 100))] + [math.ceil(n * w / 100) for w in waves]
    stages, done = [], 0
    for cut in cuts:
        cut = min(n, cut)
        if cut > done:
            stages.append(ordered[done:cut])
            done = cut
    return stages


@dataclass
class Group:
    """A group's health over the window: per device the median of its reports, then across devices."""

    devices: int = 0
    reporting: int = 0
    p95_ms: float | None = None
    error_rate: float | None = None
    confidence: float | None = None
    crashes: int = 0
    samples: int = 0

    @classmethod
    def of(cls, reports: dict[str, list[dict]], devices: list[str], min_reports: int) -> Group:
        g = cls(devices=len(devices))
        per = {d: reports.get(d, []) for d in devices}
        ok = {d: r for d, r in per.items() if len(r) >= min_reports}
        g.reporting, g.samples = len(ok), sum(len(r) for r in per.values())
        if not ok:
            return g

        def med(key):
            vals = [statistics.median(v) for r in ok.values() if (v := [x[key] for x in r if x.get(key) is not None])]
            return vals

        p95, err, conf = med("p95_ms"), med("error_rate"), med("confidence")
        g.p95_ms = round(statistics.median(p95), 4) if p95 else None
        g.error_rate = round(statistics.fmean(err), 4) if err else None
        g.confidence = round(statistics.fmean(conf), 4) if conf else None
        g.crashes = sum(max(x.get("crashes") or 0 for x in r) - min(x.get("crashes") or 0 for x in r)
                        for r in ok.values())
        return g


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)


def compare(canary: Group, control: Group, failed: int, c: Criteria) -> Decision:
    """Promote unless the canary breaches a criterion against the control (or cannot be judged)."""
    reasons = []
    if canary.devices and failed / canary.devices > c.max_failed_fraction:
        reasons.append(f"{failed} of {canary.devices} devices did not commit the update")
    if canary.reporting == 0:
        reasons.append("no canary device reported enough health in the window")
    if canary.p95_ms is not None and control.p95_ms is not None:
        if canary.p95_ms > control.p95_ms * c.max_latency_ratio and \
                canary.p95_ms - control.p95_ms > c.min_latency_delta_ms:
            reasons.append(f"latency p95 {canary.p95_ms:.3f} ms vs control {control.p95_ms:.3f} ms "
                           f"(> x{c.max_latency_ratio})")
    if canary.error_rate is not None and control.error_rate is not None and \
            canary.error_rate - control.error_rate > c.max_error_rate_delta:
        reasons.append(f"error rate {canary.error_rate:.3f} vs control {control.error_rate:.3f}")
    if canary.confidence is not None and control.confidence is not None and \
            abs(canary.confidence - control.confidence) > c.max_confidence_shift:
        reasons.append(f"mean top-1 confidence {canary.confidence:.3f} vs control {control.confidence:.3f}")
    if canary.crashes:
        reasons.append(f"{canary.crashes} crash(es) in the window")
    return Decision(not reasons, reasons, {"canary": canary.__dict__, "control": control.__dict__, "failed": failed})


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (id INTEGER PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,
    stage INTEGER NOT NULL DEFAULT 0, baseline TEXT, created REAL NOT NULL, updated REAL NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS stages (rollout INTEGER NOT NULL, idx INTEGER NOT NULL, devices TEXT NOT NULL,
    state TEXT NOT NULL, sent REAL, observe_start REAL, decided REAL, decision TEXT, PRIMARY KEY (rollout, idx));
CREATE TABLE IF NOT EXISTS events (rollout INTEGER NOT NULL, at REAL NOT NULL, event TEXT NOT NULL);
"""


class Store:
    """The rollouts database; every change is one committed transaction (WAL: the CLI may write meanwhile)."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def create(self, spec: RolloutSpec, stages: list[list[str]]) -> int:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute("INSERT INTO rollouts (spec, state, created, updated) VALUES (?, 'running', ?, ?)",
                                  (spec.model_dump_json(), now, now))
            rid = cur.lastrowid
            for i, devs in enumerate(stages):
                self.db.execute("INSERT INTO stages (rollout, idx, devices, state) VALUES (?, ?, ?, 'pending')",
                                (rid, i, json.dumps(devs)))
        self.event(rid, f"planned {len(stages)} stage(s) over {sum(map(len, stages))} device(s)")
        return rid

    def get(self, rid: int) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM rollouts WHERE id = ?", (rid,)).fetchone()
        if row is None:
            raise NotFoundError(f"no rollout {rid}", hint="list them with `edgepilot fleet rollouts`")
        return row

    def spec(self, rid: int) -> RolloutSpec:
        return RolloutSpec.model_validate_json(self.get(rid)["spec"])

    def unfinished(self, sha256: str | None = None) -> list[int]:
        rows = self.db.execute(f"SELECT id, spec FROM rollouts WHERE state IN {ACTIVE} ORDER BY id").fetchall()
        return [r["id"] for r in rows if sha256 is None or json.loads(r["spec"])["sha256"] == sha256]

    def stages(self, rid: int) -> list[dict]:
        rows = self.db.execute("SELECT * FROM stages WHERE rollout = ? ORDER BY idx", (rid,)).fetchall()
        return [{**dict(r), "devices": json.loads(r["devices"]),
                 "decision": json.loads(r["decision"]) if r["decision"] else None} for r in rows]

    def set_stage(self, rid: int, idx: int, **fields) -> None:
        if "decision" in fields:
            fields["decision"] = json.dumps(fields["decision"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE stages SET {sets} WHERE rollout = ? AND idx = ?", (*fields.values(), rid, idx))

    def set_rollout(self, rid: int, **fields) -> None:
        if "baseline" in fields:
            fields["baseline"] = json.dumps(fields["baseline"])
        sets = ", ".join(f"{k} = ?" for k in (*fields, "updated"))
        self.db.execute(f"UPDATE rollouts SET {sets} WHERE id = ?", (*fields.values(), time.time(), rid))

    def request(self, rid: int, action: str) -> str:
        """pause | resume | abort, as the CLI asks; the controller acts on it at its next step."""
        state = self.get(rid)["state"]
        new = {("pause", "running"): "paused", ("resume", "paused"): "running",
               ("abort", "running"): "aborting", ("abort", "paused"): "aborting"}.get((action, state))
        if new is None:
            raise ConfigError(f"rollout {rid} is {state}: cannot {action} it")
        self.set_rollout(rid, state=new)
        self.event(rid, f"{action} requested")
        return new

    def event(self, rid: int, text: str) -> None:
        self.db.execute("INSERT INTO events (rollout, at, event) VALUES (?, ?, ?)", (rid, time.time(), text))

    def events(self, rid: int) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT at, event FROM events WHERE rollout = ? ORDER BY rowid",
                                                 (rid,)).fetchall()]

    def summary(self, rid: int) -> dict:
        r = self.get(rid)
        spec = json.loads(r["spec"])
        return {"id": rid, "state": r["state"], "bundle": spec["bundle"], "name": spec["name"],
                "version": spec["version"], "class": spec["device_class"], "stage": r["stage"], "reason": r["reason"],
                "created": r["created"], "updated": r["updated"], "stages": self.stages(rid),
                "events": self.events(rid)}

    def all(self) -> list[int]:
        return [r["id"] for r in self.db.execute("SELECT id FROM rollouts ORDER BY id").fetchall()]
