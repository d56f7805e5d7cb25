"""Serving throughput and latency: `edgepilot serve` over KServe v2 binary and JSON (HTTP) and gRPC, with and
without dynamic batching, at 1, 4 and 16 concurrent clients, against the raw in-process engine in the same run and,
with --peer-python, against MLServer serving the same ONNX model with the same threads (the peer runs in its own
virtual environment: `python3 -m venv V && V/bin/pip install mlserver==1.7.1 onnxruntime`).

The model is the tests' tiny CNN ([1, 3, 32, 32] float32 in, 3,072 values: a "small tensor"). The server's cost is
also measured on a dense model taking the same input (3072-2048-2048-10, 10.5 M weights): a weight-bound model, where
one batch of 16 costs little more than one sample, unlike the convolutions; and over binary and gRPC on two real
models from published wheels, where inference is what edge models cost: PaddleOCR's text-direction classifier
(ppocr-cls-v2, [1, 3, 48, 192]) and NudeNet's YOLOv8n detector (nudenet-320n, [1, 3, 320, 320]). Servers run as their
own processes, as users run them; clients are threads of this process (see client_call). Every cell runs for
--seconds; rates are requests per second, latencies are per request as the client sees them. Both servers are up at
once and their cells alternate; the ratio to the peer is the median of PEER_PAIRS back-to-back pairs (this machine's
speed drifts by up to 2x over minutes). Writes bench/results/serve.{json,md}.
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
from dataclasses import dataclass, field
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
DENSE_RUNS = (("binary", 1), ("binary", 4), ("json", 4), ("binary", 8), ("binary", 16))
REAL_RUNS = (("binary", 1), ("binary", 4), ("grpc", 4))
REAL_MODELS = {"ppocr-cls-v2": (1, 3, 48, 192), "nudenet-320n": (1, 3, 320, 320)}  # asset -> the input fed
SMALL_TENSOR = 4096  # elements: the JSON target's "small tensors"
PEER_PAIRS = 3
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


@dataclass(frozen=True)
class BenchModel:
    path: Path
    about: str
    input: str = "input"
    output: str = "output"
    x: np.ndarray = field(default_factory=lambda: sample("cnn", batch=1))


def real_model(name: str, shape: tuple[int, ...]) -> BenchModel:
    """A model of a published wheel (cached by `edgepilot.assets`; never downloaded here) with a seeded input."""
    from edgepilot.assets import asset
    from edgepilot.model import Model

    path = asset(name, download=False)
    model = Model.load(path)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return BenchModel(path, f"{path.name} from its wheel, {list(shape)} float32", model.inputs[0].name,
                      model.outputs[0].name, x)


def write_repository(root: Path, models: dict[str, BenchModel]) -> None:
    """Per model, "M-plain" (no batching) and "M-batched" (up to 16 samples, the server's default window)."""
    for kind, model in models.items():
        for mode, cfg in (("plain", {"max_batch": 1}), ("batched", {"max_batch": 16})):
            folder = root / f"{kind}-{mode}"
            (folder / "1").mkdir(parents=True)
            (folder / "1" / "model.onnx").write_bytes(model.path.read_bytes())
            (folder / "config.yaml").write_text(json.dumps({"threads": THREADS, "warmup": 5, **cfg}))


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


def client_call(protocol: str, http: int, grpc: int, model: str, spec: BenchModel):
    """A fresh client for one thread, and the call it repeats.

    gRPC goes through Triton's client. Over HTTP each client keeps one connection and posts a request encoded once,
    as Triton's perf_analyzer does: Triton's Python HTTP client spends more CPU per call than the server (its JSON
    encoder on 3,072 floats), so the rate would be the client's. The tests run Triton's clients for compatibility.
    """
    x = spec.x
    if protocol == "grpc":
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(f"127.0.0.1:{grpc}")
        inp = tc.InferInput(spec.input, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return lambda: client.infer(model, [inp]).as_numpy(spec.output)
    from http.client import HTTPConnection

    tensor = {"name": spec.input, "shape": list(x.shape), "datatype": "FP32"}
    if protocol == "json":
        body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
        headers = {"Content-Type": "application/json"}
    else:  # the binary tensor extension, the output binary too
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                             "outputs": [{"name": spec.output, "parameters": {"binary_data": True}}]}).encode()
        body = header + x.tobytes()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    connection = HTTPConnection("127.0.0.1", http, timeout=60)
    path = f"/v2/models/{model}/infer"

    def call() -> bytes:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
        return data

    return call


def load(protocol: str, http: int, grpc: int, model: str, spec: BenchModel, concurrency: int, seconds: float,
         server_pid: int | None = None) -> dict:
    """`concurrency` clients calling for `seconds`; with server_pid, also that server's CPU per request."""
    import psutil

    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        call = client_call(protocol, http, grpc, model, spec)  # in its own thread, as Triton's gRPC client wants
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
    server = psutil.Process(server_pid) if server_pid else None
    cpu0 = sum(server.cpu_times()[:2]) if server else 0.0
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    cpu = sum(server.cpu_times()[:2]) - cpu0 if server else None
    lat = np.concatenate([np.asarray(v) for v in latencies]) * 1e3
    out = {"requests": int(lat.size), "rps": round(lat.size / elapsed, 1),
           "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}
    if cpu is not None:
        out["server_cpu_ms"] = round(cpu * 1e3 / lat.size, 3)  # per request
    return out


def raw_rate(model: BenchModel, seconds: float) -> dict:
    """The engine alone in this process: onnxruntime with the server's threads, one call after another."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])
    feeds = {model.input: model.x}
    for _ in range(20):
        session.run(None, feeds)
    lat = []
    deadline = time.perf_counter() + seconds
    t_start = time.perf_counter()
    while (t0 := time.perf_counter()) < deadline:
        session.run(None, feeds)
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_start
    a = np.asarray(lat) * 1e3
    return {"requests": int(a.size), "rps": round(a.size / elapsed, 1), "p50_ms": round(float(np.median(a)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--models", nargs="+", default=["cnn", "dense", *REAL_MODELS],
                    choices=["cnn", "dense", *REAL_MODELS], help="a subset for a short run (the peer serves cnn)")
    ap.add_argument("--peer-python", help="python of a venv with mlserver and onnxruntime (the peer server)")
    args = ap.parse_args()
    host = host_info()
    out: dict = {"host": {"cpu": host.cpu_model, "cores": host.logical_cores, "isa": host.instruction_sets},
                 "threads": THREADS, "seconds": args.seconds, "cells": [], "pairs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {"cnn": BenchModel(export_onnx("cnn", work / "cnn.onnx"), "tests' tiny CNN, [1, 3, 32, 32] float32"),
                  "dense": BenchModel(export_onnx("dense", work / "dense.onnx"),
                                      "3072-2048-2048-10 dense layers, same input")}
        models.update((name, real_model(name, shape)) for name, shape in REAL_MODELS.items())
        models = {kind: m for kind, m in models.items() if kind in args.models}
        out["models"] = {kind: m.about for kind, m in models.items()}
        out["input_elements"] = {kind: int(m.x.size) for kind, m in models.items()}
        write_repository(work / "models", models)
        out["raw"] = {kind: raw_rate(model, args.seconds) for kind, model in models.items()}
        runs = [("cnn", protocol, c) for protocol in PROTOCOLS for c in CONCURRENCY]
        runs += [("dense", protocol, c) for protocol, c in DENSE_RUNS]
        runs += [(name, protocol, c) for name in REAL_MODELS for protocol, c in REAL_RUNS]
        runs = [run for run in runs if run[0] in models]
        servers = [start_edgepilot(work / "models")]
        if args.peer_python and "cnn" in models:  # both up at once (idle, neither takes CPU): their cells alternate
            servers.append(start_peer(args.peer_python, work, models["cnn"].path))
        try:
            for kind, protocol, c in runs:
                for mode in ("plain", "batched"):
                    record(out["cells"], {"server": "edgepilot", "model": kind, "protocol": protocol,
                                          "batching": mode == "batched", "clients": c},
                           servers[0], f"{kind}-{mode}", models[kind], args.seconds)
                if len(servers) > 1 and kind == "cnn" and protocol in PEER_PROTOCOLS:
                    record(out["cells"], {"server": "mlserver", "model": "cnn", "protocol": protocol,
                                          "batching": False, "clients": c}, servers[1], "peer", models["cnn"],
                           args.seconds)
            for protocol in PEER_PROTOCOLS if len(servers) > 1 else ():
                for _ in range(PEER_PAIRS):  # the ratio the target reads: one pair after another, 4 clients
                    pair = {"protocol": protocol}
                    for name, (proc, http, grpc), model in (("edgepilot", servers[0], "cnn-plain"),
                                                            ("mlserver", servers[1], "peer")):
                        cell = load(protocol, http, grpc, model, models["cnn"], 4, args.seconds, proc.pid)
                        pair[name], pair[f"{name}_cpu_ms"] = cell["rps"], cell["server_cpu_ms"]
                    out["pairs"].append(pair)
                    print(json.dumps(pair), flush=True)
        finally:
            for proc, _, _ in servers:
                proc.terminate()
                proc.wait(30)
    out["targets"] = targets(out)
    results = ROOT / "bench" / "results"
    (results / "serve.json").write_text(json.dumps(out, indent=2) + "\n")
    (results / "serve.md").write_text(markdown(out))
    print(markdown(out))


def record(cells: list, cell: dict, server: tuple, model: str, spec: BenchModel, seconds: float) -> None:
    """Measure the cell (its protocol and clients) against `model` on `server` (proc, http port, gRPC port)."""
    proc, http, grpc = server
    cell.update(load(cell["protocol"], http, grpc, model, spec, cell["clients"], seconds, proc.pid))
    cells.append(cell)
    print(json.dumps(cell), flush=True)


def _cell(out: dict, server: str, protocol: str, batching: bool, clients: int, model: str = "cnn") -> dict | None:
    return next((c for c in out["cells"] if (c["server"], c["model"], c["protocol"], c["batching"], c["clients"])
                 == (server, model, protocol, batching, clients)), None)


def targets(out: dict) -> list[dict]:
    rows = []
    for model, raw in out["raw"].items():  # the server's cost next to tiny, sub-millisecond and real inferences
        b1, b4 = (_cell(out, "edgepilot", "binary", False, c, model) for c in (1, 4))
        rows += [
            (f"{model}, binary, 1 client: p50 added over raw (ms)", b1["p50_ms"] - raw["p50_ms"], "<= 0.5",
             lambda v: v <= 0.5),
            (f"{model}, binary, 4 clients: rate / raw rate", b4["rps"] / raw["rps"], ">= 0.90", lambda v: v >= 0.9),
        ]
        if out["input_elements"][model] <= SMALL_TENSOR:
            j4 = _cell(out, "edgepilot", "json", False, 4, model)
            rows.append((f"{model}, JSON, 4 clients: rate / raw rate", j4["rps"] / raw["rps"], ">= 0.60",
                         lambda v: v >= 0.6))
    for model, clients in (("cnn", 16), ("dense", 8), ("dense", 16)):
        if model not in out["raw"]:
            continue
        plain = _cell(out, "edgepilot", "binary", False, clients, model)
        batched = _cell(out, "edgepilot", "binary", True, clients, model)
        rows.append((f"{model}, binary, {clients} clients: batched / unbatched rate", batched["rps"] / plain["rps"],
                     ">= 2.0", lambda v: v >= 2.0))
    for protocol in PEER_PROTOCOLS:  # like for like, without batching: the median of the side-by-side pairs
        ratios = [p["edgepilot"] / p["mlserver"] for p in out["pairs"] if p["protocol"] == protocol]
        if ratios:
            rows.append((f"{protocol}, 4 clients: edgepilot / MLServer rate (median of {len(ratios)} pairs)",
                         float(np.median(ratios)), ">= 1.3", lambda v: v >= 1.3))
    return [{"what": w, "value": round(v, 3), "target": t, "met": ok(v)} for w, v, t, ok in rows]


def markdown(out: dict) -> str:
    h = out["host"]
    lines = [f"# bench/serve.py — {h['cpu']}, {h['cores']} cores ({', '.join(h['isa'])}); "
             f"model threads {out['threads']}; {out['seconds']:g} s per cell", "",
             *(f"- Raw in-process onnxruntime, {kind} ({out['models'][kind]}): {raw['rps']} calls/s, "
               f"p50 {raw['p50_ms']} ms." for kind, raw in out["raw"].items()), "",
             "| server | model | protocol | batching | clients | req/s | p50 ms | p99 ms | vs raw rate "
             "| server CPU ms/req |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in out["cells"]:
        lines.append(f"| {c['server']} | {c['model']} | {c['protocol']} | {'on' if c['batching'] else 'off'} | "
                     f"{c['clients']} | {c['rps']} | {c['p50_ms']} | {c['p99_ms']} | "
                     f"{c['rps'] / out['raw'][c['model']]['rps']:.2f} | {c['server_cpu_ms']} |")
    if out["pairs"]:
        lines += ["", "Side by side, 4 clients, no batching, one after the other:", "",
                  "| protocol | edgepilot req/s | MLServer req/s | ratio | server CPU ms/req: edgepilot, MLServer |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p['protocol']} | {p['edgepilot']} | {p['mlserver']} | {p['edgepilot'] / p['mlserver']:.2f} | "
                  f"{p['edgepilot_cpu_ms']}, {p['mlserver_cpu_ms']} |" for p in out["pairs"]]
    lines += ["", "| target | value | wanted | met |", "|---|---|---|---|"]
    lines += [f"| {t['what']} | {t['value']} | {t['target']} | {'yes' if t['met'] else 'no'} |"
              for t in out["targets"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
