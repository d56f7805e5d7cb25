"""The host yardstick's spread over 5 back-to-back runs, each in a fresh process, next to the old one.

Board latency estimates are host latency × host GFLOP/s / board GFLOP/s, so the yardstick's
run-to-run spread is the estimates' spread. Each run is a new Python process (as each `optimize`
is), started once the host is quiet (up to 2 minutes' wait). In the same processes: the first
yardstick (the median of five 512×512 products, no warm-up, threads as numpy starts them), the same
measurement as the yardstick's repeated seconds before it, and a real YOLOv8n's latency with the
board estimate it makes. Writes bench/results/estimate_stability.{json,md}.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
# One child process: the old yardstick, as it was in evaluate/report.py, then the new one.
CHILD = """
import json, time
import numpy as np
a = np.ones((512, 512), np.float32)
times = []
for _ in range(5):
    t0 = time.perf_counter(); a @ a; times.append(time.perf_counter() - t0)
old = round(2 * 512**3 / float(np.median(times)) / 1e9, 1)
from threadpoolctl import threadpool_limits
from edgepilot.engines.base import default_threads
from edgepilot.evaluate.yardstick import measure
b = np.ones((1024, 1024), np.float32)
with threadpool_limits(limits=default_threads(), user_api="blas"):  # the yardstick's measurement, seconds earlier
    b @ b; b @ b
    t_end, times = time.perf_counter() + 1.5, []
    while time.perf_counter() < t_end:
        t0 = time.perf_counter(); b @ b; times.append(time.perf_counter() - t0)
earlier = round(2 * 1024**3 / min(times) / 1e9, 1)
stick = measure()
# What the yardstick is for: a host latency scaled into a board estimate. A real YOLOv8n (NudeNet 320n), median of
# 30 runs on every core, right after the yardstick in the same process, scaled to a board of 35 GFLOP/s (Pi 5).
import onnxruntime as ort
from edgepilot.assets import asset
opts = ort.SessionOptions(); opts.intra_op_num_threads = default_threads()
sess = ort.InferenceSession(str(asset("nudenet-320n", download=False)), opts, providers=["CPUExecutionProvider"])
x = {sess.get_inputs()[0].name: np.zeros((1, 3, 320, 320), np.float32)}
for _ in range(5):
    sess.run(None, x)
lat = []
for _ in range(30):
    t0 = time.perf_counter(); sess.run(None, x); lat.append(time.perf_counter() - t0)
host_ms = float(np.median(lat)) * 1e3
print(json.dumps({"old_gflops": old, "earlier_gflops": earlier, "new": stick.model_dump(),
                  "host_ms": round(host_ms, 3), "estimate_ms": round(host_ms * stick.gflops / 35, 2)}))
"""


def spread(values: list[float]) -> float:
    """(max − min) / median: the largest disagreement between two runs, relative to a typical one."""
    ordered = sorted(values)
    return round((ordered[-1] - ordered[0]) / ordered[len(ordered) // 2], 3)


def wait_for_quiet(share: float, patience_s: float = 120) -> None:
    """Wait (at most `patience_s`) until the CPU is less than `share` busy over 3 s: a quiet host."""
    import psutil

    deadline = time.monotonic() + patience_s
    while psutil.cpu_percent(interval=3.0) / 100 >= share and time.monotonic() < deadline:
        pass


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def main() -> None:
    from edgepilot.evaluate.yardstick import QUIET
    from edgepilot.host import host_info

    env_path = str(ROOT / "src")
    runs = []
    for _ in range(RUNS):
        wait_for_quiet(QUIET)
        proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path})
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    host = host_info()
    new = [r["new"]["gflops"] for r in runs]
    old = [r["old_gflops"] for r in runs]
    result = {
        "cpu": host.cpu_model, "logical_cores": host.logical_cores, "instruction_sets": host.instruction_sets,
        "threads": runs[0]["new"]["threads"], "method": runs[0]["new"]["method"],
        "new_gflops": new, "new_spread": spread(new), "within_target": spread(new) <= 0.10,
        "within_run_spread": [r["new"]["spread"] for r in runs],
        "busy": [r["new"]["busy"] for r in runs], "quiet": all((r["new"]["busy"] or 0) < QUIET for r in runs),
        "old_gflops": old, "old_spread": spread(old),
        "earlier_gflops": [r["earlier_gflops"] for r in runs],
        "earlier_spread": spread([r["earlier_gflops"] for r in runs]),
        "host_ms": [r["host_ms"] for r in runs], "host_ms_spread": spread([r["host_ms"] for r in runs]),
        "estimate_ms": [r["estimate_ms"] for r in runs], "estimate_spread": spread([r["estimate_ms"] for r in runs]),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimate_stability.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Host yardstick stability (5 back-to-back runs, fresh processes)", "",
        f"CPU: {host.cpu_model}, {host.logical_cores} logical cores, {', '.join(host.instruction_sets)}.", "",
        f"Yardstick: {result['method']}.", "",
        "| run | yardstick GFLOP/s | its within-run spread | CPU taken by other work | the same, seconds "
        "earlier | first yardstick GFLOP/s | YOLOv8n host p50 ms | its Pi 5 estimate ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {i} | {n} | {r['new']['spread']:.3f} | {_pct(r['new']['busy'])} | {r['earlier_gflops']} | {o} "
          f"| {r['host_ms']} | {r['estimate_ms']} |"
          for i, (n, o, r) in enumerate(zip(new, old, runs), 1)),
        "",
        f"Spread (max − min) / median: yardstick **{result['new_spread']:.1%}** (target ≤ 10 %), "
        f"the same measurement seconds earlier {result['earlier_spread']:.1%}, "
        f"first 512×512 median-of-5 yardstick {result['old_spread']:.1%}; the host latency "
        f"{result['host_ms_spread']:.1%}, the board estimate made of the two {result['estimate_spread']:.1%}. "
        + ("The host was quiet throughout." if result["quiet"] else
           f"The host was not quiet (other work took ≥ {QUIET:.0%} of the CPU in some runs): "
           "the spread there is the host's, not the yardstick's."), "",
    ]
    (out / "estimate_stability.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
