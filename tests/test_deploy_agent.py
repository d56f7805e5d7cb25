"""The device agent: commit, refusal, gates re-checked on the device with rollback, and a SIGKILL at every
persistence point of an update always leaving a loadable committed model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy_helpers import classifier, keys, make_bundle

pytest.importorskip("cryptography")
pytest.importorskip("onnxruntime")

from edgepilot.deploy import golden, signing  # noqa: E402
from edgepilot.deploy.agent import Agent  # noqa: E402
from edgepilot.deploy.bundle import Gates  # noqa: E402
from edgepilot.deploy.slots import FINAL, KILL_ENV  # noqa: E402
from edgepilot.engines import open_session  # noqa: E402
from edgepilot.engines.fake import FakeEngine, registered  # noqa: E402
from edgepilot.model import Model  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent")
    priv, pub = keys(tmp)
    v1, v2 = make_bundle(tmp, priv, 1), make_bundle(tmp, priv, 2)
    return {"tmp": tmp, "priv": priv, "pub": pub, "keys": [signing.load_public(pub)], "v1": v1, "v2": v2}


def _consistent(agent: Agent) -> int:
    """The committed model loads and answers its golden samples; nothing half-done is left. Returns its version."""
    st = agent.state()
    assert st.update is None or st.update.state in FINAL
    info = st.committed()
    assert info is not None and agent.dir.current.resolve() == agent.dir.slot(st.active).resolve()
    m = agent.manifest(st.active)
    slot = agent.dir.slot(st.active)
    inputs, reference = golden.load(slot / m.golden)
    with open_session(Model.load(agent.committed_model()), "onnxruntime") as s:
        out = s.run(inputs[0])
    np.testing.assert_allclose(out["output"], reference[0]["output"], rtol=1e-5, atol=1e-6)
    assert not agent.dir.staging.exists() and list(agent.dir.incoming.iterdir()) == []
    on_disk = sorted(p.name for p in agent.dir.slots.iterdir())
    assert on_disk == sorted(k for k, v in st.slots.items() if v is not None)
    return info.version


def test_install_commits_and_keeps_the_previous_slot(kit, tmp_path):
    agent = Agent(tmp_path / "state", kit["keys"])
    first = agent.install(kit["v1"])
    assert first.state == "COMMITTED" and first.trial["agreement"] == 1.0
    second = agent.install(kit["v2"])
    assert second.state == "COMMITTED" and second.active != first.active
    assert _consistent(agent) == 2
    assert agent.state().slots[first.active].version == 1  # the rollback slot
    back = agent.rollback("probation breach")
    assert back.state == "ROLLED_BACK" and _consistent(agent) == 1


def test_downgrade_expired_and_replayed_bundles_are_refused_and_change_nothing(kit, tmp_path):
    agent = Agent(tmp_path / "state", kit["keys"])
    agent.install(kit["v1"])
    agent.install(kit["v2"])
    before = agent.state()
    for bundle, kw, words in ((kit["v1"], {}, "downgrades"), (kit["v2"], {}, "not newer"),
                              (make_bundle(tmp_path, kit["priv"], 3, expires_days=0.001), {}, "expired")):
        if words == "expired":
            from datetime import datetime, timedelta, timezone

            kw = {"now_override": datetime.now(timezone.utc) + timedelta(days=1)}
        out = agent.install(bundle, **kw)
        assert out.state == "FAILED" and words in out.reason
        after = agent.state()
        assert after.active == before.active and after.slots == before.slots
        assert _consistent(agent) == 2


def test_a_bundle_signed_by_an_untrusted_key_fails(kit, tmp_path):
    other, _ = keys(tmp_path, "other")
    agent = Agent(tmp_path / "state", kit["keys"])
    out = agent.install(make_bundle(tmp_path, other, 5))
    assert out.state == "FAILED" and "signature" in out.reason and agent.state().active is None


@pytest.mark.parametrize("gates, words", [
    (Gates(max_p95_ms=1e-6), "latency p95"),  # no inference takes a nanosecond, on any CPU
    (Gates(max_memory_mb=1), "memory"),  # no Python process fits in 1 MB
])
def test_device_gates_roll_back(kit, tmp_path, gates, words):
    agent = Agent(tmp_path / "state", kit["keys"])
    agent.install(kit["v1"])
    out = agent.install(make_bundle(tmp_path, kit["priv"], 2, gates=gates))
    assert out.state == "ROLLED_BACK" and words in out.reason
    assert _consistent(agent) == 1


def test_a_model_that_breaks_the_golden_samples_rolls_back(kit, tmp_path):
    agent = Agent(tmp_path / "state", kit["keys"])
    agent.install(kit["v1"])
    reference = classifier(tmp_path / "reference.onnx", seed=7)
    broken = classifier(tmp_path / "broken.onnx", seed=7, permute=True)  # the classes in reverse order
    out = agent.install(make_bundle(tmp_path, kit["priv"], 2, model=broken, reference=reference))
    assert out.state == "ROLLED_BACK" and "golden samples: top-1 agreement" in out.reason
    assert out.trial["agreement"] < 0.99
    assert _consistent(agent) == 1


def test_a_runtime_that_answers_wrongly_or_fails_on_the_device_rolls_back(kit, tmp_path):
    agent_state = tmp_path / "state"
    Agent(agent_state, kit["keys"]).install(kit["v1"])
    wrong = FakeEngine.scripted(lambda feeds: {"output": np.eye(4, dtype=np.float32)[[3]]}, name="device-wrong")

    def crash(feeds):
        raise RuntimeError("kernel fault on this device")

    failing = FakeEngine.scripted(crash, name="device-failing")
    for engine, words in ((wrong, "golden samples"), (failing, "does not run here")):
        with registered(engine):
            out = Agent(agent_state, kit["keys"], engine=engine.name).install(kit["v2"])
        assert out.state == "ROLLED_BACK" and words in out.reason, out.reason
        assert _consistent(Agent(agent_state, kit["keys"])) == 1


def test_sigkill_at_every_persistence_point_leaves_a_committed_model(kit, tmp_path):
    template = tmp_path / "template"
    Agent(template, kit["keys"]).install(kit["v1"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    cmd = [sys.executable, "-c", "from edgepilot.cli import main; main()", "agent", "install", str(kit["v2"]),
           "--key", str(kit["pub"])]
    killed = 0
    for point in range(1, 100):
        state = tmp_path / f"state-{point}"
        shutil.copytree(template, state, symlinks=True)
        run = subprocess.run([*cmd, "--state", str(state)], env={**env, KILL_ENV: str(point)},
                             capture_output=True, text=True, timeout=120)
        agent = Agent(state, kit["keys"])  # a restart: recovery runs first
        version = _consistent(agent)
        if run.returncode == 0:  # the update got past its last persistence point
            assert version == 2
            break
        assert run.returncode == -9, run.stderr
        killed += 1
        assert version in (1, 2)
        if version == 1:  # the interrupted update can simply be run again
            assert agent.install(kit["v2"]).state == "COMMITTED" and _consistent(agent) == 2
    print(f"kill points tested: {killed}")
    assert killed >= 10


def test_the_device_side_never_imports_tensorflow_or_torch(kit, tmp_path):
    code = ("import sys; from pathlib import Path; from edgepilot.deploy.agent import Agent; "
            "from edgepilot.deploy.signing import load_public; "
            f"out = Agent(Path({str(tmp_path / 's')!r}), [load_public(Path({str(kit['pub'])!r}))])"
            f".install(Path({str(kit['v1'])!r})); "
            "print(out.state, [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["COMMITTED", "[]"], run.stderr
