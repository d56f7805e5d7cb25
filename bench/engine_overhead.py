"""How much an edgepilot Session adds over the raw runtime call (onnxruntime and LiteRT, small CNN, batch 1).

Both calls run side by side in one process, in alternating blocks, so machine noise hits them
alike; the figure is the median over blocks of the mean per-call time. Writes
bench/results/engine_overhead.{json,md}.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny reference models the tests use

from builders import sample  # noqa: E402
from builders.onnx import export_onnx  # noqa: E402
from builders.tflite import convert  # noqa: E402
from edgepilot.engines import open_session  # noqa: E402
from edgepilot.host import host_info  # noqa: E402
from edgepilot.model import Model  # noqa: E402

BLOCKS, CALLS = 41, 300


def block_mean_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def compare(raw, wrapped) -> dict:
    for _ in range(200):  # warm both paths
        raw(), wrapped()
    raw_us, ep_us = [], []
    for i in range(BLOCKS):
        pair = [(raw, raw_us), (wrapped, ep_us)]
        for fn, out in pair if i % 2 == 0 else reversed(pair):
            out.append(block_mean_us(fn, CALLS))
    r, e = float(np.median(raw_us)), float(np.median(ep_us))
    overhead = e - r
    limit = max(0.03 * r, 30.0)
    return {"raw_us": round(r, 2), "edgepilot_us": round(e, 2), "overhead_us": round(overhead, 2),
            "overhead_pct": round(overhead / r * 100, 2), "limit_us": round(limit, 2),
            "within_target": overhead <= limit}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgepilot-overhead-"))
    results = {}

    onnx_model = Model.load(export_onnx("cnn", work / "cnn.onnx"))
    x = sample("cnn", batch=1)
    session = open_session(onnx_model, "onnxruntime", threads=1)
    raw_sess = session._sess  # the very InferenceSession the edgepilot session wraps
    results["onnxruntime"] = compare(lambda: raw_sess.run(["output"], {"input": x}),
                                     lambda: session.run({"input": x}))

    tfl_model = Model.load(convert("cnn", work / "cnn.tflite"))
    xt = sample("cnn", batch=1, layout="nhwc")
    session = open_session(tfl_model, "litert", threads=1)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tfl_model.path), num_threads=1)
    it.allocate_tensors()
    i_idx, o_idx = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    name = tfl_model.inputs[0].name

    def raw_litert():
        it.set_tensor(i_idx, xt)
        it.invoke()
        return it.get_tensor(o_idx)

    results["litert"] = compare(raw_litert, lambda: session.run({name: xt}))

    host = host_info()
    payload = {"benchmark": "engine_overhead", "model": "tiny CNN (3x32x32 -> 10), batch 1, 1 thread",
               "blocks": BLOCKS, "calls_per_block": CALLS, "cpu": host.cpu_model, "cores": host.logical_cores,
               "results": results}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["# Engine overhead: edgepilot Session vs the raw runtime call", "",
             f"{payload['model']}; median of {BLOCKS} alternating blocks of {CALLS} calls; "
             f"{host.cpu_model}, {host.logical_cores} cores. Target: overhead ≤ max(3 %, 30 µs).", "",
             "| engine | raw µs/call | edgepilot µs/call | overhead µs | overhead % | within target |",
             "|---|---:|---:|---:|---:|---|"]
    for eng, r in results.items():
        lines.append(f"| {eng} | {r['raw_us']} | {r['edgepilot_us']} | {r['overhead_us']} | {r['overhead_pct']} | "
                     f"{'yes' if r['within_target'] else 'no'} |")
    (out / "engine_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
