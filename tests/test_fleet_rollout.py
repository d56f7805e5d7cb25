"""Rollout plans, the canary-versus-control decision and the rollouts database (no broker needed)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgepilot.errors import ConfigError
from edgepilot.fleet.rollout import Criteria, Group, RolloutSpec, Store, compare, percent, plan


def test_plan_is_canary_then_cumulative_waves_without_empty_ones():
    devs = [f"d{i:03d}" for i in range(100)]
    stages = plan(list(reversed(devs)), 10, [10, 50, 100])
    assert [len(s) for s in stages] == [10, 40, 50]
    assert stages[0] == devs[:10]  # ordered by id: a re-run plans the same canary
    assert [len(s) for s in plan(devs[:3], 10, [10, 50, 100])] == [1, 1, 1]
    assert sum(plan(devs[:7], 1, [100]), []) == devs[:7]


def test_waves_and_percentages_are_checked():
    with pytest.raises(ValidationError):
        RolloutSpec(bundle="b", sha256="0", target="t", device_class="c", name="n", version=1, waves=[50, 10, 100])
    with pytest.raises(ValidationError):
        RolloutSpec(bundle="b", sha256="0", target="t", device_class="c", name="n", version=1, waves=[10, 50])
    assert percent("10%") == 10
    with pytest.raises(ConfigError):
        percent("ten")


def reports(p95, conf, err=0.0, n=3, crashes=0):
    return [{"p95_ms": p95, "confidence": conf, "error_rate": err, "crashes": crashes} for _ in range(n)]


def test_compare_promotes_alike_and_names_each_breach():
    c = Criteria()
    control = Group.of({"a": reports(2.0, 0.8), "b": reports(2.2, 0.82)}, ["a", "b"], 2)
    same = Group.of({"x": reports(2.1, 0.81)}, ["x"], 2)
    assert compare(same, control, 0, c).promote
    slow = Group.of({"x": reports(9.0, 0.81)}, ["x"], 2)
    assert "latency p95" in compare(slow, control, 0, c).reasons[0]
    drift = Group.of({"x": reports(2.0, 0.4)}, ["x"], 2)
    assert "confidence" in compare(drift, control, 0, c).reasons[0]
    errors = Group.of({"x": reports(2.0, 0.8, err=0.2)}, ["x"], 2)
    assert "error rate" in compare(errors, control, 0, c).reasons[0]
    crashed = Group.of({"x": [{"p95_ms": 2, "confidence": 0.8, "crashes": 0}, {"p95_ms": 2, "confidence": 0.8,
                                                                               "crashes": 2}]}, ["x"], 2)
    assert "crash" in compare(crashed, control, 0, c).reasons[0]
    assert "did not commit" in compare(same, control, 1, c).reasons[0]
    silent = Group.of({"x": reports(2.0, 0.8, n=1)}, ["x"], 2)  # fewer reports than min_reports
    assert "no canary device" in compare(silent, control, 0, c).reasons[0]
    tiny = Group.of({"x": reports(0.05, 0.8)}, ["x"], 2)  # x2.5 of a 20 µs p95 is noise under the ms floor
    assert compare(tiny, Group.of({"a": reports(0.02, 0.8)}, ["a"], 2), 0, c).promote


def test_store_records_and_requests(tmp_path):
    store = Store(tmp_path / "fleet.db")
    spec = RolloutSpec(bundle="b", sha256="abc", target="rpi4/app-v2.edgebundle", device_class="rpi4", name="app",
                       version=2)
    rid = store.create(spec, [["a"], ["b", "c"]])
    assert store.unfinished("abc") == [rid] and store.unfinished("other") == []
    assert store.request(rid, "pause") == "paused"
    with pytest.raises(ConfigError, match="cannot pause"):
        store.request(rid, "pause")
    assert store.request(rid, "resume") == "running"
    assert store.request(rid, "abort") == "aborting"
    again = Store(tmp_path / "fleet.db")  # what a restarted controller reads
    s = again.summary(rid)
    assert s["state"] == "aborting" and [st["devices"] for st in s["stages"]] == [["a"], ["b", "c"]]
    assert [e["event"] for e in s["events"]][-1] == "abort requested"


def test_submit_selects_the_bundle_class_and_the_selector_and_resumes_the_same_bundle(tmp_path):
    from deploy_helpers import keys
    from edgepilot.fleet.controller import submit
    from edgepilot.fleet.repository import Repository
    from fleet_helpers import fleet_bundle

    key, _ = keys(tmp_path)
    repo = Repository.init(tmp_path / "repo")
    store = Store(tmp_path / "fleet.db")
    devices = {"a1": {"target": "rpi4", "site": "north"}, "a2": {"target": "rpi4", "site": "south"},
               "a3": {"target": "rpi4", "site": "north"}, "j1": {"target": "jetson-orin-nano", "site": "north"},
               "a4": {"target": "rpi4", "site": "north", "online": False}}
    bundle = fleet_bundle(tmp_path, key, 2)
    kw = dict(canary_pct=50, waves=[100], observe_s=1)
    rid, resumed = submit(store, repo, devices, bundle, selector={"site": "north"}, **kw)
    assert not resumed and [s["devices"] for s in store.stages(rid)] == [["a1"], ["a3"]]
    assert store.spec(rid).target in repo.listing()
    assert store.events(rid)[-1]["event"] == "1 matching device(s) offline: left out of the plan"
    assert submit(store, repo, devices, bundle, selector={}, **kw) == (rid, True)  # same bundle: resumed
    with pytest.raises(ConfigError, match="no device of class 'rpi4'"):
        submit(store, repo, devices, fleet_bundle(tmp_path, key, 3), selector={"site": "east"}, **kw)
