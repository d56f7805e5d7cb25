"""Probation after a commit, with real runtime processes: a model that crashes the runtime is rolled back after 3
crashes, a model whose confidence shifts is rolled back while the runtime's server answers, and the runtime then
runs the previous model again (restarted as the systemd units restart it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from brokers import free_port
from deploy_helpers import FEATURES, classifier, keys, make_bundle

pytest.importorskip("cryptography")
pytest.importorskip("onnxruntime")

from edgepilot.deploy import probation, signing  # noqa: E402
from edgepilot.deploy.agent import Agent  # noqa: E402
from edgepilot.deploy.probation import HEALTH_ENV, Probation, Thresholds, judge  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
FIELDS = [f"c{i}" for i in range(FEATURES)]


def _sensor_csv(path: Path, rows: int = 300) -> Path:
    x = np.random.default_rng(0).standard_normal((rows, FEATURES))
    path.write_text(",".join(FIELDS) + "\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in x) + "\n")
    return path


def _pipeline(tmp: Path, name: str, csv: Path, *, follow: bool = False, port: int | None = None,
              postprocess: str = "classification") -> Path:
    data = {"name": "probation", "model": {"path": "unused.onnx"},
            "sources": [{"type": "sensor", "id": "s", "path": str(csv), "follow": follow}],
            "preprocess": {"fields": FIELDS}, "postprocess": {"type": postprocess},
            "sinks": [{"type": "stdout"}], "workdir": str(tmp / "work")}
    if port:
        data["server"] = {"host": "127.0.0.1", "port": port}
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return path


_STARTED: list[subprocess.Popen] = []


def _runtime(state: Path, *args: str) -> subprocess.Popen:
    """`edgepilot run STATE/current/pipeline.yaml`, as edgepilot-runtime.service starts it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path]), HEALTH_ENV: str(state / "health")}
    cmd = [sys.executable, "-c", "from edgepilot.cli import main; main()", "run", str(state / "current" /
           "pipeline.yaml"), "--stats-interval", "0.5", *args]
    _STARTED.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return _STARTED[-1]


def _health(state: Path) -> dict:
    return probation.read_health(state / "health") or {}


def _wait(cond, what: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (v := cond()):
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.status


@pytest.fixture()
def kit(tmp_path):
    priv, pub = keys(tmp_path)
    yield {"tmp": tmp_path, "priv": priv, "keys": [signing.load_public(pub)], "csv": _sensor_csv(tmp_path / "s.csv")}
    while _STARTED:  # a failed test leaves no runtime behind
        run = _STARTED.pop()
        if run.poll() is None:
            run.kill()
            run.wait(30)


def test_a_model_that_crashes_the_runtime_is_rolled_back_after_three_crashes(kit):
    tmp, state = kit["tmp"], kit["tmp"] / "state"
    agent = Agent(state, kit["keys"], thresholds=Thresholds(window_s=3600))
    good = make_bundle(tmp, kit["priv"], 1, pipeline=_pipeline(tmp, "good.yaml", kit["csv"]))
    assert agent.install(good).state == "COMMITTED"
    run = _runtime(state)
    assert run.wait(120) == 0, run.stderr.read()
    # v2's model passes its golden samples, but its pipeline decodes it as detections: the runtime cannot start
    bad = make_bundle(tmp, kit["priv"], 2, pipeline=_pipeline(tmp, "bad.yaml", kit["csv"], postprocess="yolov8"))
    assert agent.install(bad).state == "COMMITTED" and agent.on_probation() is not None
    crashes = 0
    while True:
        run = _runtime(state)  # Restart=on-failure: systemd starts it again
        assert run.wait(120) != 0
        crashes += 1
        out = agent.check_probation()
        if out is not None:
            break
        assert crashes < 3, "not rolled back after 3 crashes"
    assert crashes == 3 and out.state == "ROLLED_BACK" and out.version == 1
    assert "crashed 3 time(s)" in out.reason
    st = agent.state()
    assert st.committed().version == 1 and st.update.probation["observed"]["crashes"] == 3
    assert probation.load(state).decision["verdict"] == "rolled back"
    run = _runtime(state)  # the restart the update path unit triggers: the previous model runs again
    assert run.wait(120) == 0, run.stderr.read()
    h = _health(state)
    assert h["version"] == 1 and h["slot"] == st.active and h["inferred"] == 300 and not h["running"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    shown = subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", "agent", "probation",
                            "--state", str(state)], env=env, capture_output=True, text=True, timeout=120)
    shown = json.loads(shown.stdout)
    assert shown["probation"]["decision"]["verdict"] == "rolled back" and shown["outcome"] is None


def test_a_confidence_shift_in_probation_rolls_back_while_the_server_answers(kit):
    tmp, state = kit["tmp"], kit["tmp"] / "state"
    port = free_port()
    agent = Agent(state, kit["keys"], thresholds=Thresholds(window_s=3600, min_samples=100))
    live = _pipeline(tmp, "live.yaml", kit["csv"], follow=True, port=port)
    done = threading.Event()

    def sensor() -> None:  # a live sensor: rows keep arriving (a live source drops what it cannot keep up with)
        rng = np.random.default_rng(1)
        with kit["csv"].open("a") as f:
            while not done.wait(0.02):
                f.write(",".join(f"{v:.5f}" for v in rng.standard_normal(FEATURES)) + "\n")
                f.flush()

    feeder = threading.Thread(target=sensor, daemon=True)
    feeder.start()

    def serve_until_reported(version: int) -> subprocess.Popen:
        run = _runtime(state)

        def reported():
            assert run.poll() is None, run.stderr.read()
            h = _health(state)
            return h.get("version") == version and (h.get("confidence_n") or 0) >= 100 and h["starts"] == 1

        _wait(reported, f"v{version}'s health")
        assert _metrics(port) == 200
        return run

    def stop(run: subprocess.Popen) -> None:  # systemctl restart: SIGTERM, a clean end
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0, run.stderr.read()

    v1 = classifier(tmp / "v1.onnx", seed=1)
    assert agent.install(make_bundle(tmp, kit["priv"], 1, model=v1, pipeline=live)).state == "COMMITTED"
    run = serve_until_reported(1)
    before = _health(state)["confidence_mean"]
    # v2: the same classes ranked first (its golden samples pass), but far less sure of them
    v2 = classifier(tmp / "v2.onnx", seed=1, scale=0.05)
    assert agent.install(make_bundle(tmp, kit["priv"], 2, model=v2, pipeline=live)).state == "COMMITTED"
    # the running runtime swaps to v2 in place within a second, but has not reported 100 results of it yet
    assert agent.check_probation() is None
    stop(run)
    run = serve_until_reported(2)
    out = agent.check_probation()
    assert out is not None and out.state == "ROLLED_BACK" and out.version == 1, out
    assert "mean top-1 confidence moved" in out.reason
    decision = agent.state().update.probation
    assert decision["observed"]["confidence_shift"] > 0.15 and decision["thresholds"]["max_confidence_shift"] == 0.15
    assert _metrics(port) == 200  # the runtime kept answering through the decision
    stop(run)
    run = serve_until_reported(1)  # restarted on the committed model: the previous one
    assert abs(_health(state)["confidence_mean"] - before) < 0.05
    assert agent.check_probation() is None
    stop(run)
    done.set()


def _p(**kw) -> Probation:
    return Probation(slot="b", version=2, started=1000.0, thresholds=Thresholds(window_s=60, min_samples=10),
                     baseline={"p95_infer_ms": 1.0, "confidence_mean": 0.8, "confidence_n": 50}, **kw)


def _h(**kw) -> dict:
    return {"slot": "b", "version": 2, "pid": os.getpid(), "running": True, "crashes": 0, "inferred": 100,
            "errors": 0, "error_rate": 0.0, "p95_infer_ms": 1.2, "confidence_mean": 0.78, "confidence_n": 100} | kw


@pytest.mark.parametrize("health, verdict, words", [
    (_h(), "watching", ""),
    (_h(error_rate=0.2, errors=25), "breach", "error rate"),
    (_h(p95_infer_ms=9.0), "breach", "p95 inference"),
    (_h(confidence_mean=0.5), "breach", "confidence moved"),
    (_h(crashes=2, running=True, pid=2**22 + 7), "breach", "crashed 3"),  # a pid no process has: died
    (_h(slot="a", version=1), "watching", ""),  # the old runtime still runs: nothing to judge
    # the runtime kept the old model, refusing to swap in the one on probation (runtime/model_watch.py)
    (_h(slot="a", version=1, swap_error={"slot": "b", "version": 2, "reason": "it takes x"}), "breach", "refused"),
    (_h(slot="a", version=1, swap_error={"slot": "b", "version": 1, "reason": "older"}), "watching", ""),
    (None, "watching", ""),
])
def test_judge_inside_the_window(health, verdict, words):
    got, reason, _ = judge(_p(), health, now=1030.0)
    assert got == verdict and words in reason


def test_a_healthy_model_passes_after_the_window_and_too_few_samples_never_breach():
    assert judge(_p(), _h(), now=1061.0)[0] == "passed"
    few = _h(inferred=3, errors=3, error_rate=0.5, p95_infer_ms=50.0, confidence_mean=0.1, confidence_n=3)
    assert judge(_p(), few, now=1030.0)[0] == "watching"
    assert "no health reported" in judge(_p(), None, now=1061.0)[1]


def test_a_probation_of_an_uncommitted_version_is_ignored(kit):
    state = kit["tmp"] / "state"
    agent = Agent(state, kit["keys"])
    assert agent.install(make_bundle(kit["tmp"], kit["priv"], 1)).state == "COMMITTED"
    assert agent.on_probation() is None  # the first model has nothing to be compared with
    (state / probation.PROBATION_FILE).write_text(json.dumps(_p().model_dump()))  # left by a kill before a commit
    assert agent.on_probation() is None and agent.check_probation() is None
    assert agent.state().committed().version == 1


def test_a_health_report_that_cannot_be_written_never_stops_the_runtime(tmp_path):
    (tmp_path / "pipeline.yaml").write_text("{}")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    health = probation.RuntimeHealth(blocked / "health", tmp_path / "pipeline.yaml")  # mkdir under a file fails
    health.update({"counters": {"inferred": 5}})
    health.stop()
    assert not (blocked / "health").exists()


def test_the_runtime_counts_an_unclean_end_as_a_crash_and_a_clean_one_not(tmp_path):
    slot = tmp_path / "slots" / "a"
    slot.mkdir(parents=True)
    (slot / "manifest.json").write_text(json.dumps({"version": 4}))
    (slot / "pipeline.yaml").write_text("{}")
    folder = tmp_path / "health"
    probation.RuntimeHealth(folder, slot / "pipeline.yaml").stop()  # a clean end
    second = probation.RuntimeHealth(folder, slot / "pipeline.yaml")
    assert (second.data["starts"], second.data["crashes"]) == (2, 0) and second.data["slot"] == "a"
    second.data["pid"] = 2**22 + 7  # its process died without closing the report
    second._write()
    third = probation.RuntimeHealth(folder, slot / "pipeline.yaml")
    assert (third.data["starts"], third.data["crashes"], third.data["version"]) == (3, 1, 4)
