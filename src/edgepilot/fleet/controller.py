"""The fleet controller: drives rollouts stage by stage over MQTT — deliver, observe, compare, promote or roll back —
with every step recorded in the rollouts database, so a restarted controller picks up where the last one stopped.

    pending → delivering (commands resent until each device answers or install_timeout_s) → observing
      (health reports of updated and control devices collected for observe_s) → promoted → next stage | done
                                                                              → rolling_back → rolled_back
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from edgepilot.errors import ConfigError
from edgepilot.fleet.inventory import Inventory, matches
from edgepilot.fleet.protocol import cmd_topic
from edgepilot.fleet.repository import Repository, read_manifest
from edgepilot.fleet.rollout import ACTIVE, Criteria, Group, RolloutSpec, Store, compare, plan

log = logging.getLogger(__name__)
ROLLBACK_TIMEOUT_S = 120.0


def submit(store: Store, repo: Repository, devices: dict[str, dict], bundle: Path, *, selector: dict[str, str],
           canary_pct: float, waves: list[float], observe_s: float, criteria: Criteria = Criteria(),
           install_timeout_s: float = 300.0) -> tuple[int, bool]:
    """Publish `bundle` in the repository and plan its rollout over the matching devices; an unfinished rollout
    of the same bundle is resumed instead. Returns (rollout id, resumed)."""
    from edgepilot.deploy.bundle import sha256_file

    sha = sha256_file(bundle)
    existing = store.unfinished(sha)
    if existing:
        return existing[0], True
    manifest = read_manifest(bundle)
    device_class = manifest.target
    target = repo.add_bundle(bundle, device_class)
    matching = [d for d, info in devices.items() if info.get("target") == device_class and matches(info, selector)]
    selected = sorted(d for d in matching if devices[d].get("online") is not False)  # offline: not planned
    if not selected:
        raise ConfigError(f"no device of class {device_class!r} matches {selector or 'the fleet'}",
                          hint="check `edgepilot fleet status`; a bundle goes to devices of its target class")
    spec = RolloutSpec(bundle=str(bundle), sha256=sha, target=target, device_class=device_class,
                       name=manifest.name, version=manifest.version, selector=selector, canary_pct=canary_pct,
                       waves=waves, observe_s=observe_s, install_timeout_s=install_timeout_s, criteria=criteria)
    rid = store.create(spec, plan(selected, canary_pct, waves))
    if len(matching) > len(selected):
        store.event(rid, f"{len(matching) - len(selected)} matching device(s) offline: left out of the plan")
    return rid, False


class Controller:
    def __init__(self, store: Store, inventory: Inventory, *, resend_s: float = 5.0) -> None:
        self.store, self.inv = store, inventory
        self.resend_s = resend_s
        self._sent: dict[tuple[int, str], float] = {}
        self._windows: dict[int, dict] = {}
        self._lock = threading.Lock()
        inventory.on_state.append(self._on_state)

    # -- health samples -------------------------------------------------------------------------------------
    def _on_state(self, device: str, body: dict) -> None:
        health = body.get("health") or {}
        with self._lock:
            for w in self._windows.values():
                if device in w["updated"]:
                    group = "canary" if health.get("version") == w["version"] else None
                elif device in w["controls"]:
                    group = "control" if health.get("version") not in (None, w["version"]) else None
                else:
                    continue
                if group and health.get("inferences"):
                    w[group].setdefault(device, []).append(health)

    # -- commands -------------------------------------------------------------------------------------------
    def _send(self, rid: int, spec: RolloutSpec, device: str, cmd: dict, force: bool = False) -> None:
        last = self._sent.get((rid, device), 0.0)
        if force or time.monotonic() - last >= self.resend_s:
            self.inv.client.publish(cmd_topic(spec.device_class, device), json.dumps({**cmd, "rollout": rid}), qos=1)
            self._sent[(rid, device)] = time.monotonic()

    # -- the state machine ----------------------------------------------------------------------------------
    def step(self, rid: int) -> bool:
        """Advance rollout `rid` by what can be done now; True once it is finished."""
        row = self.store.get(rid)
        state = row["state"]
        if state not in ACTIVE:
            return True
        spec = self.store.spec(rid)
        stages = self.store.stages(rid)
        devices = self.inv  # looked up per device: a step never copies the whole fleet
        if state == "paused":
            self._windows.pop(rid, None)  # a resumed rollout observes a fresh window
            return False
        if state == "aborting":
            return self._start_rollback(rid, spec, stages, row["stage"], "aborted by request", "aborted")
        if state == "rolling_back":
            return self._rolling_back(rid, spec, stages, row, devices)
        i = row["stage"]
        st = stages[i]
        if st["state"] == "pending":
            for d in st["devices"]:
                self._send(rid, spec, d, {"op": "update", "target": spec.target, "version": spec.version}, force=True)
            self.store.set_stage(rid, i, state="delivering", sent=time.time())
            self.store.event(rid, f"stage {i}: update sent to {len(st['devices'])} device(s)")
        elif st["state"] == "delivering":
            waiting = [d for d in st["devices"] if _outcome(devices.get(d), spec, rid) is None]
            for d in waiting:
                self._send(rid, spec, d, {"op": "update", "target": spec.target, "version": spec.version})
            if not waiting or time.time() - st["sent"] > spec.install_timeout_s:
                self.store.set_stage(rid, i, state="observing", observe_start=time.time())
                self.store.event(rid, f"stage {i}: delivered ({len(waiting)} without an answer); observing "
                                      f"{spec.observe_s:g} s")
                self._observe(rid, spec, stages, i)
        elif st["state"] == "observing":
            if rid not in self._windows:
                self._observe(rid, spec, stages, i)
                self.store.event(rid, f"stage {i}: observation window (re)started")
            elif time.time() - self._windows[rid]["start"] >= spec.observe_s:
                return self._decide(rid, spec, stages, i, row, devices)
        return False

    def _split(self, stages: list[dict], i: int) -> tuple[list[str], list[str]]:
        updated = [d for s in stages[: i + 1] for d in s["devices"]]
        control = [d for s in stages[i + 1:] for d in s["devices"]]
        return updated, control

    def _observe(self, rid: int, spec: RolloutSpec, stages: list[dict], i: int) -> None:
        updated, control = self._split(stages, i)
        with self._lock:
            self._windows[rid] = {"start": time.time(), "version": spec.version, "updated": set(updated),
                                  "controls": set(control), "canary": {}, "control": {}}

    def _decide(self, rid, spec, stages, i, row, devices) -> bool:
        updated, control = self._split(stages, i)
        with self._lock:
            w = self._windows.pop(rid)
        crit = spec.criteria
        canary = Group.of(w["canary"], updated, crit.min_reports)
        ctl = Group.of(w["control"], control, crit.min_reports)
        basis = "control"
        if ctl.reporting == 0 and row["baseline"]:
            ctl, basis = Group(**json.loads(row["baseline"])), "baseline (the control of an earlier stage)"
        failed = [d for d in updated if (devices.get(d) or {}).get("version") != spec.version]
        decision = compare(canary, ctl, len(failed), crit)
        record = {"promote": decision.promote, "reasons": decision.reasons, "basis": basis,
                  "failed_devices": failed[:20], **decision.numbers}
        self.store.set_stage(rid, i, state="promoted" if decision.promote else "rolled_back", decided=time.time(),
                             decision=record)
        if not decision.promote:
            self.store.event(rid, f"stage {i}: roll back — {'; '.join(decision.reasons)}")
            return self._start_rollback(rid, spec, stages, i, "; ".join(decision.reasons), "rolled_back")
        self.store.event(rid, f"stage {i}: promoted (canary p95 {canary.p95_ms} ms, control p95 {ctl.p95_ms} ms)")
        baseline = ctl.__dict__ if basis == "control" and ctl.reporting else json.loads(row["baseline"] or "null")
        if i + 1 == len(stages):
            self.store.set_rollout(rid, state="promoted", reason="every stage promoted", baseline=baseline)
            return True
        self.store.set_rollout(rid, stage=i + 1, baseline=baseline)
        return False

    def _start_rollback(self, rid, spec, stages, i, reason: str, final: str) -> bool:
        updated, _ = self._split(stages, i)
        for d in updated:
            self._send(rid, spec, d, {"op": "rollback", "version": spec.version}, force=True)
        self.store.set_rollout(rid, state="rolling_back", reason=f"{final}: {reason}")
        self.store.event(rid, f"rollback sent to {len(updated)} device(s)")
        return False

    def _rolling_back(self, rid, spec, stages, row, devices) -> bool:
        updated, _ = self._split(stages, row["stage"])
        left = [d for d in updated if (devices.get(d) or {}).get("version") == spec.version]
        for d in left:
            self._send(rid, spec, d, {"op": "rollback", "version": spec.version})
        final = "aborted" if (row["reason"] or "").startswith("aborted") else "rolled_back"
        if not left or time.time() - row["updated"] > ROLLBACK_TIMEOUT_S:
            self.store.set_rollout(rid, state=final)
            self.store.event(rid, f"{final}: {len(updated) - len(left)} of {len(updated)} device(s) back on their "
                                  f"previous model")
            return True
        return False

    def run(self, rids: list[int], poll_s: float = 0.2, stop: threading.Event | None = None) -> None:
        """Step every rollout until all are finished (or `stop` is set)."""
        stop = stop or threading.Event()
        pending = list(rids)
        while pending and not stop.is_set():
            pending = [r for r in pending if not self.step(r)]
            stop.wait(poll_s)


def _outcome(device: dict | None, spec: RolloutSpec, rid: int) -> str | None:
    """done / failed for a device in a delivering stage, None while it has not answered."""
    if device is None:
        return None
    if device.get("version") == spec.version:
        return "done"
    update = device.get("update") or {}
    if update.get("version") == spec.version and update.get("state") in ("FAILED", "ROLLED_BACK"):
        return "failed"
    return None
