"""`edgepilot preflight`: each checklist item is checked against the bundle, the board and the device state."""
from __future__ import annotations

from pathlib import Path

import pytest

from deploy_helpers import keys, make_bundle

pytest.importorskip("cryptography")
pytest.importorskip("onnxruntime")

from edgepilot.deploy import signing  # noqa: E402
from edgepilot.deploy.agent import Agent  # noqa: E402
from edgepilot.deploy.bundle import Gates  # noqa: E402
from edgepilot.deploy.preflight import preflight  # noqa: E402

PIPELINE = """\
name: app
model: {path: placeholder.onnx}
sources:
  - {type: sensor, id: s1, path: readings.csv}
preprocess: {fields: [a, b, c, d, e, f, g, h]}
rules:
  - name: anomaly
    when: {label: "3", min_confidence: 0.9}
    actions: [alert, {webhook: "http://127.0.0.1:9/alerts"}]
server: {port: 8081}
"""
FULL = Gates(max_p95_ms=50, min_agreement=0.99, max_memory_mb=300)


def _items(*args, **kw) -> dict[str, tuple[bool, str]]:
    return {i.name.split(" (")[0]: (i.ok, i.detail) for i in preflight(*args, **kw)}


@pytest.fixture
def setup(tmp_path: Path):
    priv, pub = keys(tmp_path)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    state = tmp_path / "device"
    trusted = [signing.load_public(pub)]
    Agent(state, trusted).install(make_bundle(tmp_path, priv, 1))
    return tmp_path, priv, trusted, state


def test_a_complete_bundle_passes_every_item(setup):
    tmp, priv, trusted, state = setup
    b = make_bundle(tmp, priv, 2, gates=FULL, pipeline=tmp / "pipeline.yaml")
    items = _items(b, "rpi4", trusted, state)
    assert all(ok for ok, _ in items.values()), items
    assert len(items) == 9
    assert "top-1 agreement 1.0000" in items["golden samples pass"][1]
    assert "app v1" in items["rollback slot present"][1]


def test_each_missing_piece_fails_its_item(setup):
    tmp, priv, trusted, _ = setup
    bare = make_bundle(tmp, priv, 3, gates=Gates(min_agreement=0.99))
    items = _items(bare, "stm32h7", trusted, None)
    failed = {name for name, (ok, _) in items.items() if not ok}
    assert failed == {"bundle built for this target", "gates defined", "model fits the target",
                      "monitoring configured", "alerts configured", "rollback slot present"}
    assert "max_p95_ms" in items["gates defined"][1] and "max_memory_mb" in items["gates defined"][1]
    assert "onnxruntime is not one of" in items["model fits the target"][1]
    assert items["golden samples pass"][0]


def test_a_wrong_key_stops_at_the_first_item(setup):
    tmp, priv, _, state = setup
    _, other_pub = keys(tmp, "other")
    items = preflight(make_bundle(tmp, priv, 4, gates=FULL), "rpi4", [signing.load_public(other_pub)], state)
    assert len(items) == 1 and not items[0].ok and "signature" in items[0].detail


def test_a_device_without_a_committed_model_has_no_rollback_slot(setup):
    tmp, priv, trusted, _ = setup
    b = make_bundle(tmp, priv, 5, gates=FULL, pipeline=tmp / "pipeline.yaml")
    items = _items(b, "rpi4", trusted, tmp / "empty-device")
    assert items["rollback slot present"][0] is False
