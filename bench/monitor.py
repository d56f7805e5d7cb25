"""The monitor's own CPU cost at a 1 s interval: the headless loop (collect + SQLite + alerts) and the live table.

Each figure is the process's own CPU time (user + system) over a steady-state window divided by the
window's wall time, so start-up (imports, probing) is excluded. Target: < 1 % of one core.
Writes bench/results/monitor.{json,md}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
WINDOW_S = 30.0
INTERVAL_S = 1.0
TARGET_PCT = 1.0


def headless(db: Path) -> dict:
    from edgepilot.monitor.advisor import Thresholds
    from edgepilot.monitor.alerts import AlertEngine, default_rules
    from edgepilot.monitor.sampler import Monitor
    from edgepilot.monitor.store import MetricStore

    monitor = Monitor(store=MetricStore(db), alerts=AlertEngine(default_rules(Thresholds()), sinks=[]))
    monitor.run(interval_s=INTERVAL_S, duration_s=3)  # warm: first rates, SQLite pages, lazy imports
    me = psutil.Process()
    c0, w0 = me.cpu_times(), time.perf_counter()
    n = monitor.run(interval_s=INTERVAL_S, duration_s=WINDOW_S)
    c1, wall = me.cpu_times(), time.perf_counter() - w0
    readings = len(monitor.latest.readings) if monitor.latest else 0
    available = [s.name for s in monitor.statuses() if s.available]
    monitor.close()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"mode": "headless loop (collectors + SQLite + alert rules)", "samples": n, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 4), "cpu_pct_of_one_core": round(cpu / wall * 100, 3),
            "cpu_ms_per_sample": round(cpu / n * 1e3, 3), "readings_per_sample": readings,
            "sources_available": available}


def live_cli(db: Path) -> dict:
    """`edgepilot monitor` as a user runs it, its table rendered every second to a (forced) terminal."""
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "120", "LINES": "60"}
    warm_s = 6.0
    proc = subprocess.Popen([sys.executable, "-c", "from edgepilot.cli import main; main()", "monitor",
                             "--duration", str(warm_s + WINDOW_S + 4), "--interval", str(INTERVAL_S), "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    p = psutil.Process(proc.pid)
    time.sleep(warm_s)  # past interpreter start-up, imports and probing
    c0, w0 = p.cpu_times(), time.perf_counter()
    time.sleep(WINDOW_S)
    c1, wall = p.cpu_times(), time.perf_counter() - w0
    proc.wait(timeout=60)
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"mode": "edgepilot monitor (live table, rendered every second)", "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 4), "cpu_pct_of_one_core": round(cpu / wall * 100, 3),
            "cpu_ms_per_sample": round(cpu / (wall / INTERVAL_S) * 1e3, 3)}


def main() -> None:
    from edgepilot.host import host_info

    with tempfile.TemporaryDirectory(prefix="edgepilot-monitor-bench-") as tmp:
        results = [headless(Path(tmp) / "headless.db"), live_cli(Path(tmp) / "live.db")]
    for r in results:
        r["within_target"] = r["cpu_pct_of_one_core"] < TARGET_PCT
    host = host_info()
    load = psutil.getloadavg()[0]
    out = {"interval_s": INTERVAL_S, "window_s": WINDOW_S, "target_pct_of_one_core": TARGET_PCT,
           "host": host.hostname, "cpu_model": host.cpu_model, "logical_cores": host.logical_cores,
           "load_average_1m_at_end": round(load, 2), "results": results,
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "monitor.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Monitor CPU cost", "",
             f"{host.cpu_model}, {host.logical_cores} logical cores; interval {INTERVAL_S:g} s, "
             f"steady-state window {WINDOW_S:g} s (start-up excluded); load average at the end {load:.2f}.",
             f"Target: < {TARGET_PCT:g} % of one core.", "",
             "| mode | CPU % of one core | CPU ms / sample | within target |", "|---|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['cpu_pct_of_one_core']:.3f} | {r['cpu_ms_per_sample']:.2f} | "
                     f"{'yes' if r['within_target'] else 'no'} |")
    h = results[0]
    lines += ["", f"Headless: {h['samples']} samples of {h['readings_per_sample']} readings each; sources available "
              f"here: {', '.join(h['sources_available'])}."]
    (res / "monitor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
