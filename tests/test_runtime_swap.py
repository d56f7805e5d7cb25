"""Swapping the model in place, with real processes: `edgepilot run` with its server on loopback answers a client
without a failed request while the link it loaded its model through is switched, refuses a model that does not fit
(the old one serves on), and follows the device agent's commit and rollback without a restart (the same PID)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from brokers import free_port
from deploy_helpers import FEATURES, classifier, keys, make_bundle
from servers import linear_onnx

httpx = pytest.importorskip("httpx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("starlette")

from edgepilot.deploy import probation  # noqa: E402
from edgepilot.deploy.probation import HEALTH_ENV  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
FIELDS = [f"c{i}" for i in range(FEATURES)]
X = np.random.default_rng(3).standard_normal((1, FEATURES)).astype(np.float32)
_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_runtime_left_behind():
    yield
    while _STARTED:
        run = _STARTED.pop()
        if run.poll() is None:
            run.kill()
            run.wait(30)


def _answer(model: Path) -> list[float]:
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [round(float(v), 4) for v in s.run(None, {"input": X})[0][0]]


def _pipeline(path: Path, model: str, csv: Path, port: int, **extra) -> Path:
    data = {"name": "swapped", "model": {"path": model, "warmup": 1},
            "sources": [{"type": "sensor", "id": "s", "path": str(csv), "follow": True}],
            "preprocess": {"fields": FIELDS}, "postprocess": {"type": "classification"},
            "sinks": [], "workdir": str(path.parent / "work"),
            "server": {"host": "127.0.0.1", "port": port, "serve_model": True}, **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def _runtime(config: Path, health: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path]), HEALTH_ENV: str(health)}
    cmd = [sys.executable, "-c", "from edgepilot.cli import main; main()", "run", str(config),
           "--stats-interval", "0.5"]
    _STARTED.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return _STARTED[-1]


def _wait(cond, what: str, run: subprocess.Popen, timeout: float = 90.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert run.poll() is None, f"the runtime exited while waiting for {what}: {run.stderr.read()}"
        if (v := cond()):
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _switch(link: Path, target: Path) -> None:
    """As the agent does: a new link renamed over the old one."""
    tmp = link.with_name(".link.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


class Client:
    """Asks the runtime's server for the pipeline model's answer to X, over and over, recording every reply."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v2/models/swapped/infer"
        self.body = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32",
                                 "data": X.ravel().tolist()}]}
        self.answers: list[list[float]] = []
        self.failures: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def ask(self, client) -> list[float] | None:
        r = client.post(self.url, json=self.body, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} {r.text}")
        return [round(float(v), 4) for v in r.json()["outputs"][0]["data"]]

    def start(self) -> Client:
        self._thread.start()
        return self

    def _loop(self) -> None:
        with httpx.Client() as client:
            while not self._done.is_set():
                try:
                    self.answers.append(self.ask(client))
                except Exception as e:  # every failure counts: the swap must fail none
                    self.failures.append(f"{type(e).__name__}: {e}")

    def latest(self) -> list[float] | None:
        return self.answers[-1] if self.answers else None

    def stop(self) -> None:
        self._done.set()
        self._thread.join(60)


def _ready(port: int):
    def ready():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/models/swapped/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
    return ready


def _feed(csv: Path, done: threading.Event) -> threading.Thread:
    """A live sensor: rows keep arriving, so the pipeline's own batches are in flight during the swaps."""
    def feed() -> None:
        rng = np.random.default_rng(1)
        with csv.open("a") as f:
            while not done.wait(0.01):
                f.write(",".join(f"{v:.5f}" for v in rng.standard_normal(FEATURES)) + "\n")
                f.flush()

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


def test_switching_the_link_swaps_the_model_without_a_failed_request_and_a_misfit_is_refused(tmp_path):
    for d in ("v1", "v2", "bad"):
        (tmp_path / d).mkdir()
    v1 = classifier(tmp_path / "v1" / "model.onnx", seed=1)
    v2 = classifier(tmp_path / "v2" / "model.onnx", seed=1, permute=True)
    linear_onnx(tmp_path / "bad" / "model.onnx")  # input [batch, 4]: not what this pipeline feeds
    assert _answer(v1) != _answer(v2)
    link = tmp_path / "current"
    os.symlink(tmp_path / "v1", link)
    csv = tmp_path / "s.csv"
    csv.write_text(",".join(FIELDS) + "\n")
    port, health = free_port(), tmp_path / "health"
    run = _runtime(_pipeline(tmp_path / "p.yaml", str(link / "model.onnx"), csv, port), health)
    done = threading.Event()
    _feed(csv, done)
    _wait(_ready(port), "the server", run)
    client = Client(port).start()
    try:
        _wait(lambda: client.latest() == _answer(v1), "v1's answers", run)
        _switch(link, tmp_path / "v2")
        run.send_signal(signal.SIGHUP)  # as `systemctl reload` does: look now (and the runtime lives on)
        _wait(lambda: client.latest() == _answer(v2), "v2's answers", run)
        h = probation.read_health(health)
        assert h["swaps"] == 1 and h["starts"] == 1 and h["crashes"] == 0 and h["pid"] == run.pid
        assert h["last_swap"]["model"].endswith("model.onnx") and h["swap_error"] is None
        _switch(link, tmp_path / "bad")
        got = _wait(lambda: (probation.read_health(health) or {}).get("swap_error"), "the refusal", run)
        assert "does not fit this pipeline" in got["reason"] and "[?, 4]" in got["reason"], got
        n = len(client.answers)
        _wait(lambda: len(client.answers) > n + 20, "more answers", run)
        assert client.latest() == _answer(v2)  # the old model serves on
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "edgepilot_pipeline_model_swaps_total 1.0" in metrics
        assert "edgepilot_pipeline_model_swap_failures_total 1.0" in metrics
        _switch(link, tmp_path / "v1")  # a fitting model after the misfit: swapped again
        _wait(lambda: client.latest() == _answer(v1), "v1's answers again", run)
        # the report follows the model swapped in: its counters start at the swap, then count the sensor's rows
        _wait(lambda: probation.read_health(health)["inferred"] > 0, "v1's inferences since the swap", run)
    finally:
        client.stop()
        done.set()
    assert client.failures == [], client.failures[:5]
    seen = {tuple(a) for a in client.answers}
    assert seen == {tuple(_answer(v1)), tuple(_answer(v2))}  # every answer is one model's, never a mix or error
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 0, run.stderr.read()
    h = probation.read_health(health)
    assert h["swaps"] == 2 and h["swap_failures"] == 1 and not h["running"] and h["inferred"] > 0


def test_the_runtime_follows_an_agent_commit_and_rollback_in_place(tmp_path):
    from edgepilot.deploy import signing
    from edgepilot.deploy.agent import Agent
    from edgepilot.deploy.probation import Thresholds

    priv, pub = keys(tmp_path)
    state = tmp_path / "state"
    agent = Agent(state, [signing.load_public(pub)], thresholds=Thresholds(window_s=3600))
    csv = tmp_path / "s.csv"
    csv.write_text(",".join(FIELDS) + "\n")
    port = free_port()
    pipeline = _pipeline(tmp_path / "p.yaml", "unused.onnx", csv, port)
    v1, v2 = classifier(tmp_path / "v1.onnx", seed=1), classifier(tmp_path / "v2.onnx", seed=1, permute=True)
    assert agent.install(make_bundle(tmp_path, priv, 1, model=v1, pipeline=pipeline)).state == "COMMITTED"
    run = _runtime(state / "current" / "pipeline.yaml", state / "health")  # as edgepilot-runtime.service runs it
    done = threading.Event()
    _feed(csv, done)
    _wait(_ready(port), "the server", run)
    client = Client(port).start()
    try:
        _wait(lambda: client.latest() == _answer(v1), "v1's answers", run)
        first = probation.read_health(state / "health")
        assert first["version"] == 1 and first["slot"] == "a" and first["starts"] == 1
        assert agent.install(make_bundle(tmp_path, priv, 2, model=v2, pipeline=pipeline)).state == "COMMITTED"
        _wait(lambda: client.latest() == _answer(v2), "v2's answers", run)
        h = _wait(lambda: (h := probation.read_health(state / "health")) and h["version"] == 2 and h, "v2's health",
                  run)
        assert h["slot"] == "b" and h["pid"] == run.pid and h["swaps"] == 1 and h["crashes"] == 0
        assert h["starts"] == 0  # swapped in, never started: no start, no crash for the probation
        p = agent.on_probation()
        assert p is not None and probation.judge(p, h)[0] == "watching"
        assert agent.rollback("the operator said so").state == "ROLLED_BACK"
        _wait(lambda: client.latest() == _answer(v1), "v1's answers after the rollback", run)
        h = _wait(lambda: (h := probation.read_health(state / "health")) and h["version"] == 1 and h,
                  "v1's health", run)
        assert h["slot"] == "a" and h["pid"] == run.pid and h["swaps"] == 2 and h["crashes"] == 0
        # v3 passes its golden samples (made by itself) but takes 4 features: the runtime refuses it, keeps v1,
        # and the probation rolls v3 back on that report
        misfit = linear_onnx(tmp_path / "v3.onnx")
        assert agent.install(make_bundle(tmp_path, priv, 3, model=misfit, pipeline=pipeline)).state == "COMMITTED"
        _wait(lambda: ((probation.read_health(state / "health") or {}).get("swap_error") or {}).get("version") == 3,
              "v3's refusal", run)
        out = agent.check_probation()
        assert out is not None and out.state == "ROLLED_BACK" and out.version == 1, out
        assert "refused to swap in v3" in out.reason and "does not fit this pipeline" in out.reason
        n = len(client.answers)
        _wait(lambda: len(client.answers) > n + 20, "more answers", run)
        assert client.latest() == _answer(v1)
    finally:
        client.stop()
        done.set()
    assert client.failures == [], client.failures[:5]
    assert run.poll() is None  # the same process throughout
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 0, run.stderr.read()


def test_a_new_slot_whose_pipeline_changed_beyond_the_model_restarts_the_runtime(tmp_path):
    from edgepilot.deploy import signing
    from edgepilot.deploy.agent import Agent

    priv, pub = keys(tmp_path)
    state = tmp_path / "state"
    agent = Agent(state, [signing.load_public(pub)])
    csv = tmp_path / "s.csv"
    csv.write_text(",".join(FIELDS) + "\n")
    port = free_port()
    assert agent.install(make_bundle(tmp_path, priv, 1, pipeline=_pipeline(tmp_path / "p1.yaml", "unused.onnx", csv,
                                                                          port))).state == "COMMITTED"
    run = _runtime(state / "current" / "pipeline.yaml", state / "health")
    _wait(_ready(port), "the server", run)
    changed = _pipeline(tmp_path / "p2.yaml", "unused.onnx", csv, port, postprocess={"type": "classification",
                                                                                     "top_k": 2})
    assert agent.install(make_bundle(tmp_path, priv, 2, pipeline=changed)).state == "COMMITTED"
    assert run.wait(90) == 75  # a clean exit asking systemd (Restart=on-failure) to start it on the new pipeline
    err = run.stderr.read()
    assert "differs from the running pipeline beyond model.path (postprocess)" in err, err
    h = probation.read_health(state / "health")
    assert not h["running"] and h["version"] == 1  # a clean end: the restart on v2 is no crash
    assert h["restarting"]["reason"].endswith("restarting to apply it") and h["swap_error"] is None
