"""The device's state directory: A/B slots, a `current` link and state.json, written crash-safely.

    STATE/
      state.json        the truth: active slot, what each slot holds, the update in progress, history
      current -> slots/a   what the runtime loads (repaired from state.json at every start)
      slots/a/ slots/b/    extracted, verified bundles (manifest.json beside the files)
      staging/  incoming/  work areas, emptied at every start
      health/runtime.json  the runtime's health report; probation.json: the committed model's probation (probation.py)

Every change is a temp file, fsync, rename, fsync of the folder. `EDGEPILOT_AGENT_KILL_AT=N` SIGKILLs the agent at
its Nth persistence point: the crash test's hook.
"""
from __future__ import annotations

import os
import shutil
import signal
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from edgepilot.errors import ConfigError

KILL_ENV = "EDGEPILOT_AGENT_KILL_AT"
SLOTS = ("a", "b")
IN_PROGRESS = ("DOWNLOADING", "VERIFIED", "STAGED", "TRIAL")
FINAL = ("COMMITTED", "ROLLED_BACK", "FAILED")
HISTORY = 50


class SlotInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int
    model: str  # the model file, relative to the slot
    installed: str


class Update(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: str  # one of IN_PROGRESS or FINAL
    slot: str
    source: str
    version: int | None = None
    reason: str = ""
    trial: dict | None = None
    probation: dict | None = None  # the probation's decision, when it rolled this update back
    at: str = ""


class DeviceState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: str | None = None
    slots: dict[str, SlotInfo | None] = {s: None for s in SLOTS}
    update: Update | None = None
    highest: int = 0  # the newest version ever committed: a rolled-back version is never taken again
    history: list[Update] = []

    def committed(self) -> SlotInfo | None:
        return self.slots.get(self.active) if self.active else None

    def inactive(self) -> str:
        return next(s for s in SLOTS if s != self.active)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StateDir:
    """Durable reads and writes under one state folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.slots, self.staging, self.incoming = self.root / "slots", self.root / "staging", self.root / "incoming"
        self.file, self.current = self.root / "state.json", self.root / "current"
        self.health = self.root / "health"  # the runtime's health report (EDGEPILOT_HEALTH_DIR)
        self._points = 0
        self._kill_at = int(os.environ.get(KILL_ENV, "0") or 0)

    def point(self) -> None:
        """A persistence point: where the crash test may kill this process."""
        self._points += 1
        if self._points == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    @property
    def points(self) -> int:
        return self._points

    def ensure(self) -> None:
        for d in (self.root, self.slots, self.incoming, self.health):
            d.mkdir(parents=True, exist_ok=True)

    def read(self) -> DeviceState:
        if not self.file.exists():
            return DeviceState()
        try:
            return DeviceState.model_validate_json(self.file.read_bytes())
        except ValueError as e:  # renames are atomic: only a foreign hand can leave this
            raise ConfigError(f"{self.file}: unreadable device state ({e})",
                              hint="restore it from a backup; the slots are intact") from e

    def write(self, state: DeviceState) -> None:
        if state.update is not None and state.update.state in FINAL:
            state.history = ([*state.history, state.update])[-HISTORY:]
        self.write_bytes(self.file, state.model_dump_json(indent=2).encode())

    def write_bytes(self, path: Path, data: bytes) -> None:
        self.point()
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.point()
        os.replace(tmp, path)
        fsync_dir(path.parent)
        self.point()

    def slot(self, name: str) -> Path:
        return self.slots / name

    def replace_slot(self, name: str, source: Path) -> None:
        """Move a verified staging folder into slot `name` (its old content is already disowned in state.json)."""
        self.remove(self.slot(name))
        self.point()
        os.chmod(source, 0o755)  # staging is private while unverified; the runtime's user reads the slot
        os.rename(source, self.slot(name))
        fsync_dir(self.slots)
        self.point()

    def remove(self, path: Path) -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        fsync_dir(path.parent)

    def link_current(self, slot: str | None) -> None:
        """Point `current` at the slot atomically (a new link renamed over the old)."""
        target = f"slots/{slot}" if slot else None
        if target is None:
            if self.current.is_symlink():
                self.remove(self.current)
            return
        if self.current.is_symlink() and os.readlink(self.current) == target:
            return
        tmp = self.root / ".current.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        self.point()
        os.replace(tmp, self.current)
        fsync_dir(self.root)
        self.point()

    def save_manifest(self, folder: Path, manifest_json: str) -> None:
        with open(folder / "manifest.json", "w") as f:
            f.write(manifest_json)
            f.flush()
            os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
