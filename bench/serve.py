"""Serving throughput and latency: `edgepilot serve` over KServe v2 binary and JSON (HTTP) and gRPC, with and
without dynamic batching, at 1, 4 and 16 concurrent clients, against the raw in-process engine in the same run and,
with --peer-python, against MLServer serving the same ONNX model with the same threads (the peer runs in its own
virtual environment: `python3 -m venv V && V/bin/pip install mlserver==1.7.1 onnxruntime`).

The model is the tests' tiny CNN ([1, 3, 32, 32] float32 in, 3,072 values: a "small tensor"). Servers run as their
own processes, as users run them; the clients are Triton's Python clients, one per thread. Every cell runs for
--seconds; rates are requests per second, latencies are per request as the client sees them. Writes
bench/results/serve.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from brokers import free_port  # noqa: E402
from builders import sample  # noqa: E402
from builders.onnx import export_onnx  # noqa: E402
from edgepilot.host import host_info  # noqa: E402

THREADS = 2
CONCURRENCY = (1, 4, 16)
PROTOCOLS = ("binary", "json", "grpc")
PEER_PROTOCOLS = ("json", "grpc")  # MLServer does not take Triton's binary tensor extension in requests
PEER_RUNTIME = '''
import numpy as np, onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse

class OnnxModel(MLModel):
    async def load(self):
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.settings.parameters.extra["threads"])
        self.session = ort.InferenceSession(self.settings.parameters.uri, so, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.session.run(None, {"input": x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", y)])
'''


def write_repository(root: Path, model: Path) -> None:
    for name, cfg in (("plain", {"max_batch": 1}), ("batched", {"max_batch": 16, "max_delay_ms": 2})):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(model.read_bytes())
        (root / name / "config.yaml").write_text(json.dumps({"threads": THREADS, "warmup": 5, **cfg}))


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not become ready")


def start_edgepilot(repo: Path) -> tuple[subprocess.Popen, int, int]:
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgepilot", "serve", "--models", str(repo), "--port", str(http),
                             "--grpc-port", str(grpc)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{http}", proc, "edgepilot serve")
    return proc, http, grpc


def start_peer(python: str, work: Path, model: Path) -> tuple[subprocess.Popen, int, int]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    folder = work / "peer"
    folder.mkdir()
    (folder / "peer_runtime.py").write_text(PEER_RUNTIME)
    # parallel_workers 0: inference in the server process (MLServer 1.7's worker pool fails to start under uvloop
    # 0.22+, and a 70 µs model gains nothing from a process hop)
    (folder / "settings.json").write_text(json.dumps({"http_port": http, "grpc_port": grpc, "metrics_port": metrics,
                                                      "host": "127.0.0.1", "parallel_workers": 0}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "peer", "implementation": "peer_runtime.OnnxModel",
        "parameters": {"uri": str(model), "extra": {"threads": THREADS}}}))
    env = {**os.environ, "PYTHONPATH": str(folder)}
    log = (work / "mlserver.log").open("wb")
    proc = subprocess.Popen([str(Path(python).parent / "mlserver"), "start", str(folder)], cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{http}", proc, "MLServer")
    return proc, http, grpc


def client_call(protocol: str, http: int, grpc: int, model: str, x: np.ndarray):
    """A fresh client for one thread, and the call it repeats."""
    if protocol == "grpc":
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(f"127.0.0.1:{grpc}")
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return lambda: client.infer(model, [inp]).as_numpy("output")
    import tritonclient.http as tc

    binary = protocol == "binary"
    client = tc.InferenceServerClient(f"127.0.0.1:{http}", connection_timeout=60, network_timeout=60)
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = [tc.InferRequestedOutput("output", binary_data=binary)]
    return lambda: client.infer(model, [inp], outputs=out).as_numpy("output")


def load(protocol: str, http: int, grpc: int, model: str, concurrency: int, seconds: float) -> dict:
    x = sample("cnn", batch=1)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        call = client_call(protocol, http, grpc, model, x)  # in its thread: the HTTP client is gevent-based
        call()  # connect and warm up
        out = latencies[i]
        start.wait()
        while (t0 := time.perf_counter()) < stop_at[0]:
            call()
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    stop_at[0] = time.perf_counter() + 1e9
    start.wait()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    lat = np.concatenate([np.asarray(v) for v in latencies]) * 1e3
    return {"requests": int(lat.size), "rps": round(lat.size / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def raw_rate(model: Path, seconds: float) -> dict:
    """The engine alone in this process: onnxruntime with the server's threads, one call after another."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = sample("cnn", batch=1)
    for _ in range(50):
        session.run(None, {"input": x})
    lat = []
    deadline = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while (t0 := time.perf_counter()) < deadline:
        session.run(None, {"input": x})
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_start
    a = np.asarray(lat) * 1e3
    return {"requests": int(a.size), "rps": round(a.size / elapsed, 1), "p50_ms": round(float(np.median(a)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--peer-python", help="python of a venv with mlserver and onnxruntime (the peer server)")
    args = ap.parse_args()
    host = host_info()
    out: dict = {"host": {"cpu": host.cpu_model, "cores": host.logical_cores, "isa": host.instruction_sets},
                 "threads": THREADS, "seconds": args.seconds, "model": "tests' tiny CNN, "
                 "[1, 3, 32, 32] float32", "cells": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = export_onnx("cnn", work / "cnn.onnx")
        write_repository(work / "models", model)
        out["raw"] = raw_rate(model, args.seconds)
        proc, http, grpc = start_edgepilot(work / "models")
        try:
            for protocol in PROTOCOLS:
                for name in ("plain", "batched"):
                    for c in CONCURRENCY:
                        cell = {"server": "edgepilot", "protocol": protocol, "batching": name == "batched",
                                "clients": c, **load(protocol, http, grpc, name, c, args.seconds)}
                        out["cells"].append(cell)
                        print(json.dumps(cell), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
        if args.peer_python:
            proc, http, grpc = start_peer(args.peer_python, work, model)
            try:
                for protocol in PEER_PROTOCOLS:
                    for c in CONCURRENCY:
                        cell = {"server": "mlserver", "protocol": protocol, "batching": False, "clients": c,
                                **load(protocol, http, grpc, "peer", c, args.seconds)}
                        out["cells"].append(cell)
                        print(json.dumps(cell), flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    out["targets"] = targets(out)
    results = ROOT / "bench" / "results"
    (results / "serve.json").write_text(json.dumps(out, indent=2) + "\n")
    (results / "serve.md").write_text(markdown(out))
    print(markdown(out))


def _cell(out: dict, server: str, protocol: str, batching: bool, clients: int) -> dict | None:
    return next((c for c in out["cells"] if (c["server"], c["protocol"], c["batching"], c["clients"])
                 == (server, protocol, batching, clients)), None)


def targets(out: dict) -> list[dict]:
    raw = out["raw"]
    b1, b4 = _cell(out, "edgepilot", "binary", False, 1), _cell(out, "edgepilot", "binary", False, 4)
    j4 = _cell(out, "edgepilot", "json", False, 4)
    plain16, batched16 = _cell(out, "edgepilot", "binary", False, 16), _cell(out, "edgepilot", "binary", True, 16)
    rows = [
        ("binary, 1 client: p50 added over raw (ms)", b1["p50_ms"] - raw["p50_ms"], "<= 0.5", lambda v: v <= 0.5),
        ("binary, 4 clients: rate / raw rate", b4["rps"] / raw["rps"], ">= 0.90", lambda v: v >= 0.9),
        ("JSON, 4 clients: rate / raw rate", j4["rps"] / raw["rps"], ">= 0.60", lambda v: v >= 0.6),
        ("binary, 16 clients: batched / unbatched rate", batched16["rps"] / plain16["rps"], ">= 2.0",
         lambda v: v >= 2.0),
    ]
    for protocol in PEER_PROTOCOLS:  # like for like, without batching
        peer, ours = _cell(out, "mlserver", protocol, False, 4), _cell(out, "edgepilot", protocol, False, 4)
        if peer is not None:
            rows.append((f"{protocol}, 4 clients: edgepilot / MLServer rate", ours["rps"] / peer["rps"], ">= 1.3",
                         lambda v: v >= 1.3))
    return [{"what": w, "value": round(v, 3), "target": t, "met": ok(v)} for w, v, t, ok in rows]


def markdown(out: dict) -> str:
    h = out["host"]
    lines = [f"# bench/serve.py — {h['cpu']}, {h['cores']} cores ({', '.join(h['isa'])}); "
             f"model threads {out['threads']}; {out['seconds']:g} s per cell", "",
             f"Raw in-process onnxruntime: {out['raw']['rps']} calls/s, p50 {out['raw']['p50_ms']} ms.", "",
             "| server | protocol | batching | clients | req/s | p50 ms | p99 ms | vs raw rate |",
             "|---|---|---|---|---|---|---|---|"]
    for c in out["cells"]:
        lines.append(f"| {c['server']} | {c['protocol']} | {'on' if c['batching'] else 'off'} | {c['clients']} | "
                     f"{c['rps']} | {c['p50_ms']} | {c['p99_ms']} | {c['rps'] / out['raw']['rps']:.2f} |")
    lines += ["", "| target | value | wanted | met |", "|---|---|---|---|"]
    lines += [f"| {t['what']} | {t['value']} | {t['target']} | {'yes' if t['met'] else 'no'} |"
              for t in out["targets"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
