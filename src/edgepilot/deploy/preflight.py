"""The deployment checklist (the reference article's §7.1) made executable: every item is checked, none is printed."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgepilot.deploy import golden
from edgepilot.deploy.bundle import Gates, Verified, extract
from edgepilot.errors import EdgepilotError


@dataclass
class Item:
    name: str
    ok: bool
    detail: str


def preflight(bundle: Path, target: str, keys: list, state: Path | None = None) -> list[Item]:
    """Check `bundle` for the board `target`; `state`: the device agent's folder, for the rollback slot."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            v = extract(bundle, Path(tmp) / "staging", keys)
        except EdgepilotError as e:
            return [Item("bundle verifies (signature, sha256 per file, safe archive)", False, str(e))]
        items = [Item("bundle verifies (signature, sha256 per file, safe archive)", True,
                      f"signed by {v.signer}, {len(v.manifest.files)} files")]
        items += [_target(v, target), _gates(v.manifest.gates), _fits(v, target), _golden(v), *_monitoring(v),
                  _expiry(v), _rollback(state)]
    return items


def _target(v: Verified, target: str) -> Item:
    return Item("bundle built for this target", v.manifest.target == target,
                f"bundle target {v.manifest.target}, checking {target}")


def _gates(g: Gates) -> Item:
    missing = [k for k, val in g.model_dump().items() if val is None]
    return Item("gates defined (latency p95, agreement, memory)", not missing,
                f"missing: {', '.join(missing)}" if missing else
                f"p95 ≤ {g.max_p95_ms} ms, agreement ≥ {g.min_agreement}, memory ≤ {g.max_memory_mb} MB")


def _fits(v: Verified, target: str) -> Item:
    from edgepilot.targets.profiles import get_board

    try:
        board = get_board(target)
    except EdgepilotError as e:
        return Item("model fits the target", False, str(e))
    m = v.manifest
    size = m.files[m.model].size + sum(e.size for n, e in m.files.items() if n.startswith("model/") and n != m.model)
    problems = []
    if m.engine is not None and m.engine not in board.runtimes:
        problems.append(f"runtime {m.engine} is not one of {board.name}'s ({', '.join(board.runtimes)})")
    if board.flash_bytes is not None and size > board.flash_bytes:
        problems.append(f"model {size} B > flash {board.flash_bytes} B")
    need = max(size, (m.gates.max_memory_mb or 0) * 2**20)
    if need > board.ram_bytes:
        problems.append(f"needs {need / 2**20:.1f} MB > RAM {board.ram_bytes / 2**20:.0f} MB")
    return Item("model fits the target", not problems,
                "; ".join(problems) or f"{size / 2**10:.1f} KiB model, memory gate within {board.name}'s "
                                        f"{board.ram_bytes / 2**20:.0f} MB RAM, runtime {m.engine or 'any'}")


def _golden(v: Verified) -> Item:
    """The golden samples here (agreement only: latency and memory are the device's to measure)."""
    m = v.manifest
    gates = Gates(min_agreement=m.gates.min_agreement if m.gates.min_agreement is not None else 1.0)
    r = golden.trial(v.path(m.model), v.path(m.golden), m.task, gates, m.engine)
    detail = f"{m.samples} samples, {r.metric} {r.agreement:.4f}" if r.agreement is not None else ""
    return Item("golden samples pass", r.ok, "; ".join(r.breaches) or detail)


def _monitoring(v: Verified) -> list[Item]:
    from edgepilot.config import load_yaml
    from edgepilot.runtime.pipeline import PipelineConfig

    names = ("monitoring configured (pipeline server /metrics or a JSON log)",
             "alerts configured (a rule that alerts, delivered off the device)")
    if v.manifest.pipeline is None:
        return [Item(n, False, "the bundle has no pipeline config (bundle --pipeline)") for n in names]
    cfg = load_yaml(v.path(v.manifest.pipeline), PipelineConfig)
    watched = [w for w, on in (("server /metrics", cfg.server is not None), ("JSON log", cfg.logging is not None))
               if on]
    alerting = [r.name for r in cfg.rules if any(a.kind == "alert" for a in r.actions)]
    sinks = [s["type"] if isinstance(s, dict) else s.type for s in cfg.sinks]  # the default is not validated
    off_device = [t for t in sinks if t in ("mqtt", "webhook")] + \
        [a.kind for r in cfg.rules for a in r.actions if a.kind in ("mqtt", "webhook")]
    alert_detail = ("no rule raises an alert" if not alerting else
                    "alerts stay on the device: add an mqtt or webhook sink" if not off_device else
                    f"rules {', '.join(alerting)} via {', '.join(sorted(set(off_device)))}")
    return [Item(names[0], bool(watched), ", ".join(watched) or "add server: or logging: to the pipeline"),
            Item(names[1], bool(alerting and off_device), alert_detail)]


def _expiry(v: Verified) -> Item:
    left = v.manifest.expires - datetime.now(timezone.utc)
    return Item("bundle not about to expire (≥ 1 day left)", left.total_seconds() >= 86400,
                f"expires {v.manifest.expires.isoformat()}")


def _rollback(state: Path | None) -> Item:
    name = "rollback slot present (a committed model to return to)"
    if state is None:
        return Item(name, False, "give --state, the device agent's folder, to check it")
    from edgepilot.deploy.slots import StateDir

    try:
        st = StateDir(state).read()
    except EdgepilotError as e:
        return Item(name, False, str(e))
    info = st.committed()
    if info is None or not (Path(state) / "slots" / st.active / info.model).is_file():
        return Item(name, False, f"{state}: no committed model (install a first bundle before updates)")
    return Item(name, True, f"slot {st.active} holds {info.name} v{info.version}: it stays while the update runs")
