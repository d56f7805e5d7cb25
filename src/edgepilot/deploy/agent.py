"""The device agent: install a bundle into the inactive slot, re-check its gates here, switch atomically or roll back.

    DOWNLOADING → VERIFIED → STAGED → TRIAL → COMMITTED | ROLLED_BACK | FAILED

The active slot is never written during an update, and state.json names it until the one rename that commits the
new slot, so a kill at any point leaves the committed model loadable; `recover()` (run at every start) finishes
the story of an interrupted update and empties the work areas. After a commit that replaced a model, the new one
is on probation (probation.py): `check_probation()` rolls it back when its health breaches the thresholds.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgepilot.deploy import golden, probation
from edgepilot.deploy.bundle import Limits, Manifest, extract
from edgepilot.deploy.slots import IN_PROGRESS, SLOTS, DeviceState, SlotInfo, StateDir, Update, now
from edgepilot.errors import BundleError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    state: str  # COMMITTED, ROLLED_BACK or FAILED
    version: int | None
    reason: str
    active: str | None
    trial: dict | None = None

    def to_dict(self) -> dict:
        return self.__dict__.copy()


class Agent:
    """One device's update agent over a state folder, trusting these public keys."""

    def __init__(self, state_dir: Path, public_keys: list, *, engine: str | None = None,
                 limits: Limits = Limits(), thresholds: probation.Thresholds | None = None) -> None:
        self.dir = StateDir(state_dir)
        self.keys = public_keys
        self.engine = engine  # overrides the bundle's engine (a device with another runtime)
        self.limits = limits
        self.thresholds = thresholds or probation.Thresholds()
        self.dir.ensure()
        self.recover()

    # -- reading ---------------------------------------------------------------------------------------------
    def state(self) -> DeviceState:
        return self.dir.read()

    def committed_model(self) -> Path | None:
        """The committed model file, through the `current` link, as the runtime opens it."""
        info = self.state().committed()
        return self.dir.current / info.model if info else None

    def manifest(self, slot: str) -> Manifest:
        return Manifest.model_validate_json((self.dir.slot(slot) / "manifest.json").read_bytes())

    # -- recovery ---------------------------------------------------------------------------------------------
    def recover(self) -> DeviceState:
        """Make the folder consistent with state.json: close an interrupted update, drop disowned slots and work
        files, point `current` at the active slot."""
        st = self.dir.read()
        if st.update is not None and st.update.state in IN_PROGRESS:
            was = st.update.state
            st.update = st.update.model_copy(update={
                "state": "ROLLED_BACK" if was == "TRIAL" else "FAILED", "at": now(),
                "reason": f"interrupted in {was} (the agent stopped); the committed model stays"})
            self.dir.write(st)
            log.warning("recovered from an update interrupted in %s", was)
        for work in (self.dir.staging, *self.dir.incoming.glob("*")):
            self.dir.remove(work)
        for name in SLOTS:
            if st.slots.get(name) is None and self.dir.slot(name).exists():
                self.dir.remove(self.dir.slot(name))
        self.dir.link_current(st.active)
        return st

    # -- the update -------------------------------------------------------------------------------------------
    def install(self, bundle: Path, *, now_override=None) -> Outcome:
        """Run one update from a bundle file to COMMITTED, ROLLED_BACK or FAILED; never raises for a bad bundle."""
        st = self.recover()
        target = st.inactive()
        was = st.committed()  # the baseline of a probation: the replaced model's last health report
        baseline = probation.baseline_for(self.dir.health, st.active, was.version if was else None)
        st.update = Update(state="DOWNLOADING", slot=target, source=str(bundle), at=now())
        self.dir.write(st)
        incoming = self.dir.incoming / "bundle.edgebundle"
        try:
            self._download(Path(bundle), incoming)
            verified = extract(incoming, self.dir.staging, self.keys, now=now_override,
                               newer_than=st.highest or None, limits=self.limits)
        except (BundleError, OSError) as e:
            return self._finish(st, "FAILED", str(e))
        m = verified.manifest
        self.dir.save_manifest(verified.root, m.model_dump_json(indent=2))
        st.slots[target] = None  # the inactive slot is disowned before anything is written into it
        self._advance(st, "VERIFIED", version=m.version)
        self.dir.replace_slot(target, verified.root)
        self.dir.remove(incoming)
        self._advance(st, "STAGED")
        self._advance(st, "TRIAL")
        slot = self.dir.slot(target)
        result = golden.trial(slot / m.model, slot / m.golden, m.task, m.gates, self.engine or m.engine)
        st.update.trial = result.to_dict()
        if not result.ok:
            st.slots[target] = None
            out = self._finish(st, "ROLLED_BACK", "; ".join(result.breaches))
            self.dir.remove(slot)
            return out
        st.slots[target] = SlotInfo(name=m.name, version=m.version, model=m.model, installed=now())
        if was is not None:  # written before the commit: a probation of a version never committed is ignored
            probation.save(self.dir, probation.Probation(slot=target, version=m.version, started=time.time(),
                                                         thresholds=self.thresholds, baseline=baseline))
        st.active, st.highest = target, m.version  # the commit: one rename of state.json
        out = self._finish(st, "COMMITTED", f"{m.name} v{m.version} passed its gates on this device")
        self.dir.link_current(target)
        return out

    def rollback(self, reason: str, *, decision: dict | None = None) -> Outcome:
        """Switch back to the other slot (the previous model), e.g. after a probation breach."""
        st = self.recover()
        back = st.inactive()
        previous = st.slots.get(back)
        if previous is None:
            raise ConfigError("no rollback slot: the other slot holds no committed model",
                              hint="install a bundle first; the slot of the previous model is kept until then")
        left = st.active
        st.active = back
        st.slots[left] = None  # a model rolled back from is never switched to again
        st.update = Update(state="ROLLED_BACK", slot=left or back, source="rollback", version=previous.version,
                           reason=reason, probation=decision, at=now())
        self.dir.write(st)
        self.dir.link_current(back)
        if left:
            self.dir.remove(self.dir.slot(left))
        return Outcome("ROLLED_BACK", previous.version, reason, back)

    def on_probation(self) -> probation.Probation | None:
        """The committed model's probation while undecided (None once decided, or for a model not committed)."""
        p = probation.load(self.dir.root)
        st = self.state()
        info = st.committed()
        if p is None or p.decision is not None or info is None or st.active != p.slot or info.version != p.version:
            return None
        return p

    def check_probation(self, clock: float | None = None) -> Outcome | None:
        """Judge the committed model's latest health report: roll back on a breach, end the probation once its
        window passed; None while it keeps watching (or when no probation runs)."""
        p = self.on_probation()
        if p is None:
            return None
        verdict, reason, observed = probation.judge(p, probation.read_health(self.dir.health), clock)
        if verdict == "watching":
            return None
        p.decision = {"verdict": "passed" if verdict == "passed" else "rolled back", "reason": reason,
                      "observed": observed, "thresholds": p.thresholds.model_dump(), "at": now()}
        log.warning("probation of v%d: %s (%s)", p.version, p.decision["verdict"], reason)
        # the rollback first: killed before it, the next check retakes the decision; after it, the probation no
        # longer matches the committed model
        out = self.rollback(f"probation: {reason}", decision=p.decision) if verdict == "breach" else None
        probation.save(self.dir, p)
        return out or Outcome("COMMITTED", p.version, reason, p.slot)

    def _download(self, source: Path, dest: Path) -> None:
        """Copy the bundle in (a partial copy never has the final name), then persist."""
        part = dest.with_name(dest.name + ".part")
        with open(source, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        self.dir.point()
        os.replace(part, dest)
        self.dir.point()

    def _advance(self, st: DeviceState, state: str, **changes) -> None:
        st.update = st.update.model_copy(update={"state": state, "at": now(), **changes})
        self.dir.write(st)

    def _finish(self, st: DeviceState, state: str, reason: str) -> Outcome:
        self._advance(st, state, reason=reason)
        for work in (self.dir.staging, *self.dir.incoming.glob("*")):
            self.dir.remove(work)
        log.info("update %s: %s", state, reason)
        return Outcome(state, st.update.version, reason, st.active, st.update.trial)


def watch(agent: Agent, inbox: Path, interval_s: float = 5.0, notify=None, stop=None) -> None:
    """Install every bundle dropped into `inbox` (oldest first, then deleted) and judge the committed model's
    probation, feeding the systemd watchdog."""
    inbox.mkdir(parents=True, exist_ok=True)
    if notify:
        notify("READY=1")
    while stop is None or not stop():
        for path in sorted(inbox.glob("*.edgebundle"), key=lambda p: p.stat().st_mtime):
            outcome = agent.install(path)
            log.warning("%s: %s (%s)", path.name, outcome.state, outcome.reason)
            path.unlink(missing_ok=True)
        agent.check_probation()
        if notify:
            notify("WATCHDOG=1")
        time.sleep(interval_s)
