"""Fleet health from the running pipeline (`fleet agents --health-dir`), with real processes: an `edgepilot run`
runtime writes its health into the device's folder, the fleet agent publishes it over a real Mosquitto, and the
controller and `fleet status` see the runtime's numbers; a report for another version, a stale or missing one is
published as no health (the reason said once in the agent's log) and the agent keeps running."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from deploy_helpers import FEATURES, classifier, keys, make_bundle
from edgepilot.fleet.runtime_health import RuntimeReader, summarize

pytest.importorskip("onnxruntime")
pytest.importorskip("cryptography")

EXE = [sys.executable, "-c", "from edgepilot.cli import main; main()"]
SRC = str(Path(__file__).resolve().parents[1] / "src")
FIELDS = [f"c{i}" for i in range(FEATURES)]
DEV = "dev-0000"


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, *sys.path]), "OMP_NUM_THREADS": "1", **extra}


def _report(**kw) -> dict:
    """A runtime report as deploy/probation.py RuntimeHealth writes it (this process stands in for the runtime)."""
    return {"pipeline": "/state/slots/b", "slot": "b", "version": 2, "pid": os.getpid(), "running": True,
            "starts": 1, "crashes": 0, "started_at": time.time() - 30, "updated_at": time.time(), "inferred": 120,
            "errors": 3, "error_rate": 0.02439, "p95_infer_ms": 0.41234, "confidence_mean": 0.812345,
            "confidence_n": 120, "swaps": 0, "swap_failures": 0, "last_swap": None, "swap_error": None} | kw


# -- the report as health ---------------------------------------------------------------------------------------
def test_the_committed_models_fresh_report_is_published_in_the_light_mode_schema():
    health, why = summarize(_report(), "b", 2, max_age_s=15)
    assert why is None and health["source"] == "runtime" and health["missing"] is None
    assert {k: health[k] for k in ("p95_ms", "error_rate", "crashes", "confidence", "inferences")} == {
        "p95_ms": 0.4123, "error_rate": 0.0244, "crashes": 0, "confidence": 0.8123, "inferences": 123}
    assert health["results"] == {"inferred": 120, "errors": 3, "confidence_n": 120}
    assert health["runtime"]["pid"] == os.getpid() and health["runtime"]["version"] == 2
    assert summarize(_report(crashes=2), "b", 2, 15)[0]["crashes"] == 2


@pytest.mark.parametrize("changes, words", [
    ({"version": 1, "slot": "a"}, "no health for v2 (slot b) yet: the runtime reports v1 (slot a)"),
    ({"slot": "a"}, "no health for v2 (slot b) yet"),  # the same number in the other slot: another bundle
    ({"version": 1, "slot": "a", "swap_error": {"slot": "b", "version": 2, "reason": "does not fit"}},
     "the runtime refused to swap in v2: does not fit"),
    ({"updated_at": -60}, "stale health report: not refreshed within 15 s"),
    ({"updated_at": None}, "stale health report: no updated_at"),
    ({"running": False}, "is not running"),
    ({"pid": 2 ** 22 + 12345}, "is not alive"),  # above any pid_max: no such process
])
def test_a_report_of_another_model_or_a_stale_one_is_no_health(changes, words):
    if changes.get("updated_at"):
        changes = {**changes, "updated_at": time.time() + changes["updated_at"]}
    health, why = summarize(_report(**changes), "b", 2, max_age_s=15)
    assert words in why and health["missing"] == why
    assert health["inferences"] == 0 and health["p95_ms"] is None and health["confidence"] is None
    assert health["error_rate"] is None and health["crashes"] == 0


def test_the_controller_takes_no_sample_from_no_health_and_one_from_the_runtimes(tmp_path):
    """The controller's own hook: no health is neither a canary's nor a control's sample (as a light-mode device
    that just committed), so the window's decision is the one for a canary that did not report."""
    from edgepilot.fleet.controller import Controller
    from edgepilot.fleet.inventory import Inventory
    from edgepilot.fleet.protocol import broker
    from edgepilot.fleet.rollout import Criteria, Group, Store, compare

    ctl = Controller(Store(tmp_path / "fleet.db"), Inventory(broker("127.0.0.1:1")))
    ctl._observe(1, SimpleNamespace(version=2), [{"devices": ["canary"]}, {"devices": ["control"]}], 0)
    stale = summarize(_report(updated_at=time.time() - 60), "b", 2, 15)[0]
    other = summarize(_report(version=1, slot="a"), "b", 2, 15)[0]
    for _ in range(3):
        ctl._on_state("canary", {"version": 2, "health": {**other, "version": 2}})
        ctl._on_state("canary", {"version": 2, "health": {**stale, "version": 2}})
        ctl._on_state("control", {"version": 1, "health": {**summarize(_report(version=3, slot="a"), "a", 1, 15)[0],
                                                           "version": 1}})
    w = ctl._windows[1]
    assert w["canary"] == {} and w["control"] == {}
    decision = compare(Group.of(w["canary"], ["canary"], 2), Group.of(w["control"], ["control"], 2), 0, Criteria())
    assert decision.reasons == ["no canary device reported enough health in the window"]
    fresh = summarize(_report(), "b", 2, 15)[0]
    for _ in range(2):
        ctl._on_state("canary", {"version": 2, "health": {**fresh, "version": 2}})
    canary = Group.of(ctl._windows[1]["canary"], ["canary"], 2)
    assert canary.reporting == 1 and canary.confidence == 0.8123 and canary.p95_ms == 0.4123


def test_a_missing_or_corrupt_report_is_said_once_in_one_log_line(tmp_path, caplog):
    reader = RuntimeReader(tmp_path, max_age_s=15, device_id="d1")
    with caplog.at_level(logging.INFO, logger="edgepilot.fleet.runtime_health"):
        for _ in range(3):
            assert reader.summary("b", 2)["missing"].startswith("no health report at")
        (tmp_path / "runtime.json").write_text('{"slot": "b", "vers')
        for _ in range(3):
            assert reader.summary("b", 2)["missing"].startswith("unreadable health report")
        (tmp_path / "runtime.json").write_text("[1, 2]")
        assert "not a JSON object" in reader.summary("b", 2)["missing"]
        (tmp_path / "runtime.json").write_text(json.dumps(_report()))
        assert reader.summary("b", 2)["inferences"] == 123
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all("\n" not in m and m.startswith("d1: ") for m in lines), lines
    assert "no health report at" in lines[0] and "unreadable" in lines[1] and "not a JSON object" in lines[2]
    assert "publishing the runtime's health of v2" in lines[3]


def test_health_dir_is_refused_for_more_than_one_hosted_device(tmp_path):
    from edgepilot.fleet.repository import Repository

    repo = Repository.init(tmp_path / "repo")
    _, pub = keys(tmp_path)
    run = subprocess.run([*EXE, "fleet", "agents", "--count", "2", "--class", "rpi4", "--state",
                          str(tmp_path / "devices"), "--repo-url", "http://127.0.0.1:1", "--root",
                          str(repo.metadata / "1.root.json"), "--key", str(pub), "--health-dir", str(tmp_path / "h"),
                          "--broker", "127.0.0.1:1"], capture_output=True, text=True, env=_env(), timeout=120)
    assert run.returncode != 0
    assert run.stderr.startswith("error: --health-dir reads one runtime's health, but this process hosts 2 devices")
    assert run.stderr.count("\n") == 1 and "--count 1" in run.stderr


# -- the real thing ---------------------------------------------------------------------------------------------
class Sensor:
    """A live sensor: rows keep arriving in the CSV the runtime follows, while on."""

    def __init__(self, csv: Path) -> None:
        self.csv, self.rng = csv, np.random.default_rng(1)
        csv.write_text(",".join(FIELDS) + "\n")
        self._on = threading.Event()
        self._done = threading.Event()
        threading.Thread(target=self._feed, daemon=True).start()

    def _feed(self) -> None:
        with self.csv.open("a") as f:
            while not self._done.wait(0.02):
                if self._on.is_set():
                    f.write(",".join(f"{v:.5f}" for v in self.rng.standard_normal(FEATURES)) + "\n")
                    f.flush()

    def on(self) -> None:
        self._on.set()

    def off(self) -> None:
        self._on.clear()

    def close(self) -> None:
        self._done.set()


@pytest.fixture
def kit(tmp_path, mosquitto):
    from edgepilot.fleet.repository import Repository
    from fleet_helpers import Served

    priv, pub = keys(tmp_path)
    repo = Repository.init(tmp_path / "repo")
    served = Served(tmp_path / "repo")
    sensor = Sensor(tmp_path / "s.csv")
    procs: list[subprocess.Popen] = []
    yield SimpleNamespace(tmp=tmp_path, priv=priv, pub=pub, repo=repo, url=served.url, port=mosquitto.port,
                          sensor=sensor, procs=procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    sensor.close()
    served.close()


def _pipeline(tmp: Path, csv: Path) -> Path:
    data = {"name": "app", "model": {"path": "unused.onnx"},
            "sources": [{"type": "sensor", "id": "s", "path": str(csv), "follow": True}],
            "preprocess": {"fields": FIELDS}, "postprocess": {"type": "classification"}, "sinks": [],
            "workdir": str(tmp / "work")}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _wait(cond, what: str, alive: list[subprocess.Popen], timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in alive:
            assert p.poll() is None, f"{p.args[3:6]} exited while waiting for {what}"
        if (v := cond()):
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_real_devices_agent_publishes_its_runtimes_health_to_the_controller_and_status(kit):
    from edgepilot.deploy import probation
    from edgepilot.fleet.inventory import Inventory
    from edgepilot.fleet.protocol import broker

    pipeline = _pipeline(kit.tmp, kit.sensor.csv)
    v1 = make_bundle(kit.tmp, kit.priv, 1, model=classifier(kit.tmp / "v1.onnx", seed=1), pipeline=pipeline)
    state = kit.tmp / "devices" / DEV / "agent"  # the device agent's folder: slots, `current`, health/
    health_dir = state / "health"
    log = kit.tmp / "agent.log"
    agent = subprocess.Popen(
        [*EXE, "fleet", "agents", "--count", "1", "--class", "rpi4", "--state", str(kit.tmp / "devices"),
         "--repo-url", kit.url, "--root", str(kit.repo.metadata / "1.root.json"), "--key", str(kit.pub),
         "--initial", str(v1), "--interval", "0.3", "--health-dir", str(health_dir), "--health-max-age", "20",
         "--broker", f"127.0.0.1:{kit.port}"], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=_env())
    kit.procs.append(agent)
    inv = Inventory(broker(f"127.0.0.1:{kit.port}")).start()
    try:
        def health(**want):
            h = (inv.get(DEV) or {}).get("health") or {}
            return h if all(f(h.get(k)) if callable(f) else h.get(k) == f for k, f in want.items()) else None

        def missing(words: str):
            return lambda m: bool(m) and words in m

        # no runtime yet: no health, the agent says why and keeps reporting
        h = _wait(lambda: health(version=1, missing=missing("no health report at")), "no report", [agent])
        assert h["inferences"] == 0 and h["p95_ms"] is None and h["confidence"] is None
        health_dir.mkdir(parents=True, exist_ok=True)
        (health_dir / "runtime.json").write_text("{torn")
        _wait(lambda: health(missing=missing("unreadable health report")), "the corrupt report", [agent])
        # a report of another version (a runtime not swapped yet) is not this version's health
        (health_dir / "runtime.json").write_text(json.dumps(_report(slot="b", version=7)))
        h = _wait(lambda: health(missing=missing("no health for v1 (slot a) yet: the runtime reports v7")),
                  "the other version's report", [agent])
        assert h["inferences"] == 0 and h["confidence"] is None and h["version"] == 1
        (health_dir / "runtime.json").unlink()

        # the runtime as edgepilot-runtime.service runs it: the committed slot's pipeline, health into health/
        kit.sensor.on()
        run = subprocess.Popen([*EXE, "run", str(state / "current" / "pipeline.yaml"), "--stats-interval", "0.5"],
                               env=_env(EDGEPILOT_HEALTH_DIR=str(health_dir)), stdout=subprocess.DEVNULL,
                               stderr=(kit.tmp / "run.log").open("wb"))
        kit.procs.append(run)
        h = _wait(lambda: health(version=1, source="runtime", missing=None, inferences=lambda n: n and n > 20),
                  "the runtime's health", [agent, run])
        assert h["runtime"]["pid"] == run.pid and h["runtime"]["slot"] == "a" and 0 < h["confidence"] <= 1
        # the sensor stops: the runtime's counts settle, and what the agent publishes is what the runtime wrote
        kit.sensor.off()

        last = {"n": None, "since": time.monotonic()}

        def quiet():  # the runtime's count unchanged over several of its 0.5 s ticks
            n = (probation.read_health(health_dir) or {}).get("inferred")
            if n != last["n"]:
                last.update(n=n, since=time.monotonic())
            return time.monotonic() - last["since"] > 3

        _wait(quiet, "the runtime's counts to settle", [agent, run])
        report = probation.read_health(health_dir)
        h = _wait(lambda: health(results=lambda r: bool(r) and r["inferred"] == report["inferred"]),
                  "the published health to match the runtime's report", [agent, run])
        assert h["confidence"] == round(report["confidence_mean"], 4)
        assert h["inferences"] == report["inferred"] + report["errors"] and h["error_rate"] == 0.0
        assert h["p95_ms"] == round(report["p95_infer_ms"], 4) and h["crashes"] == 0
        status = subprocess.run([*EXE, "fleet", "status", "--broker", f"127.0.0.1:{kit.port}", "--json"],
                                capture_output=True, text=True, env=_env(), timeout=120)
        assert status.returncode == 0, status.stderr
        row = json.loads(status.stdout)["devices"][0]
        assert row["device"] == DEV and row["health"] == "runtime" and row["version"] == 1
        assert row["inferences"] == h["inferences"] and row["confidence"] == h["confidence"]

        # a rollout: the agent commits v2, the runtime swaps it in place, and the controller judges the canary
        # on the runtime's health of v2 (the report of v1 meanwhile is no health for v2)
        kit.sensor.on()
        v2 = make_bundle(kit.tmp, kit.priv, 2, model=classifier(kit.tmp / "v2.onnx", seed=2), pipeline=pipeline)
        roll = subprocess.run([*EXE, "fleet", "rollout", str(v2), "--repo", str(kit.tmp / "repo"), "--db",
                               str(kit.tmp / "fleet.db"), "--broker", f"127.0.0.1:{kit.port}", "--canary", "100%",
                               "--waves", "100", "--observe", "6s", "--json"],
                              capture_output=True, text=True, env=_env(), timeout=300)
        out = json.loads(roll.stdout or "{}")
        assert roll.returncode == 0 and out["state"] == "promoted", (roll.stderr[-3000:], out)
        canary = out["stages"][0]["decision"]["canary"]
        assert canary["reporting"] == 1 and canary["samples"] >= 2 and 0 < canary["confidence"] <= 1
        h = _wait(lambda: health(version=2, missing=None, inferences=lambda n: bool(n)), "v2's health", [agent, run])
        assert h["runtime"]["pid"] == run.pid and h["runtime"]["slot"] == "b" and h["runtime"]["swaps"] == 1
        # the runtime killed: its report is stale at once (its pid is gone), and the agent lives on
        run.kill()
        run.wait(30)
        h = _wait(lambda: health(version=2, missing=missing("is not alive")), "the dead runtime", [agent])
        assert h["inferences"] == 0 and h["confidence"] is None
    finally:
        inv.stop()
    assert agent.poll() is None
    said = log.read_text()
    assert "no health report at" in said and "unreadable health report" in said and "not alive" in said
    assert said.count("unreadable health report") == 1  # once, not at every interval


def test_the_inventory_outlives_a_state_nested_too_deep(mosquitto):
    """Anyone on the broker can publish on a state topic: JSON nested deeper than Python recurses raised a
    RecursionError in paho's callback, which ended its network thread, and the controller heard no device again."""
    import paho.mqtt.client as mqtt

    from edgepilot.fleet.inventory import Inventory
    from edgepilot.fleet.protocol import broker, state_topic

    inv = Inventory(broker(f"127.0.0.1:{mosquitto.port}")).start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        def say(device: str, payload: bytes, retain: bool = False) -> None:
            client.publish(state_topic("rpi4", device), payload, qos=1, retain=retain).wait_for_publish(5)

        say("first", json.dumps({"version": 1}).encode(), retain=True)  # retained: seen once the inventory listens
        assert inv.wait_for(lambda d: "first" in d, 20)
        say("deep", b"[" * 100_000 + b"]" * 100_000)
        say("good", json.dumps({"version": 3}).encode())
        assert inv.wait_for(lambda d: d.get("good", {}).get("version") == 3, 20), inv.devices()
        assert "deep" not in inv.devices()
    finally:
        client.disconnect()
        client.loop_stop()
        inv.stop()
