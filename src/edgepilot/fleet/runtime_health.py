"""Health from the running pipeline (`edgepilot fleet agents --health-dir DIR`): the report `edgepilot run` writes
to DIR/runtime.json (deploy/probation.py), in the health schema light mode publishes (agents.py `Health.summary`).

Only a fresh report of the device's committed slot and version counts. Any other — none yet, unreadable, for
another version (the runtime has not swapped yet), stale (not refreshed for `max_age_s`), or from a runtime that
is not running — is published as no health: no inferences and no numbers, with the reason in `missing`. The
controller takes no sample from it, neither healthy nor a breach, as from a light-mode device that has just
committed.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from edgepilot.deploy.probation import HEALTH_FILE, crashes, pid_alive

log = logging.getLogger(__name__)


def read_report(folder: Path) -> tuple[dict | None, str | None]:
    """(the runtime's report, None) or (None, why there is none)."""
    path = Path(folder) / HEALTH_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, f"no health report at {path} (is `edgepilot run` running with EDGEPILOT_HEALTH_DIR there?)"
    except OSError as e:
        return None, f"cannot read the health report {path}: {e.strerror or e}"
    except ValueError as e:
        return None, f"unreadable health report {path}: {str(e).splitlines()[0][:120]}"
    if not isinstance(data, dict):
        return None, f"unreadable health report {path}: not a JSON object"
    return data, None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(report: dict, slot: str | None, version: int | None, max_age_s: float,
              now: float | None = None) -> tuple[dict, str | None]:
    """The health to publish for the committed `slot`/`version` from one report: (health, None) when the report
    is that model's and current, else (no health, the reason)."""
    now = time.time() if now is None else now
    seen = {"pid": report.get("pid"), "slot": report.get("slot"), "version": report.get("version"),
            "running": report.get("running"), "starts": report.get("starts"), "swaps": report.get("swaps"),
            "updated_at": report.get("updated_at")}
    updated = _number(report.get("updated_at"))
    if updated is not None:
        seen["age_s"] = round(now - updated, 1)
    refused = report.get("swap_error") or {}
    if (report.get("slot"), report.get("version")) != (slot, version):
        if isinstance(refused, dict) and (refused.get("slot"), refused.get("version")) == (slot, version):
            why = f"the runtime refused to swap in v{version}: {refused.get('reason')}"
        else:
            why = (f"no health for v{version} (slot {slot}) yet: the runtime reports v{report.get('version')} "
                   f"(slot {report.get('slot')})")
        return _none(why, seen), why
    if updated is None or now - updated > max_age_s:
        why = (f"stale health report: not refreshed within {max_age_s:g} s (last at "
               f"{time.strftime('%H:%M:%S', time.localtime(updated))})" if updated is not None
               else "stale health report: no updated_at")
        return _none(why, seen), why
    if not report.get("running"):
        why = f"the runtime of v{version} is not running (it ended; pid {report.get('pid')})"
        return _none(why, seen), why
    if not pid_alive(report.get("pid")):
        why = f"stale health report: the runtime (pid {report.get('pid')}) is not alive"
        return _none(why, seen), why
    inferred, errors = int(report.get("inferred") or 0), int(report.get("errors") or 0)
    p95, conf = _number(report.get("p95_infer_ms")), _number(report.get("confidence_mean"))
    return {
        "p95_ms": round(p95, 4) if p95 is not None else None,
        "error_rate": round(float(report.get("error_rate") or 0.0), 4) if inferred + errors else None,
        "crashes": crashes(report),
        "confidence": round(conf, 4) if conf is not None else None,
        "inferences": inferred + errors,
        "source": "runtime", "missing": None,
        "results": {"inferred": inferred, "errors": errors, "confidence_n": int(report.get("confidence_n") or 0)},
        "runtime": seen,
    }, None


def _none(reason: str, seen: dict | None = None) -> dict:
    return {"p95_ms": None, "error_rate": None, "crashes": 0, "confidence": None, "inferences": 0,
            "source": "runtime", "missing": reason, "results": None, "runtime": seen}


class RuntimeReader:
    """Reads DIR/runtime.json at each report; says each new reason for having no health once, in one log line."""

    def __init__(self, folder: Path, max_age_s: float, device_id: str = "") -> None:
        self.folder, self.max_age_s, self.device_id = Path(folder), max_age_s, device_id
        self._said: str | None = None
        self._lock = threading.Lock()  # the report loop and an MQTT (re)connect both publish

    def summary(self, slot: str | None, version: int | None) -> dict:
        if version is None:
            health, why = _none("no committed model"), None  # said by the agent itself
        else:
            report, why = read_report(self.folder)
            health, why = (_none(why), why) if report is None else summarize(report, slot, version, self.max_age_s)
        with self._lock:
            said, self._said = self._said, why
        if why != said:
            if why is not None:
                log.warning("%s: %s", self.device_id, why)
            elif said is not None:
                log.info("%s: publishing the runtime's health of v%s", self.device_id, version)
        return health
