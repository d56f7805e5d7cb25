"""The durable MQTT outbox against a real Mosquitto: order, broker outages, kill -9, full disks, corrupt files."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from brokers import Subscriber, free_port
from edgepilot.errors import InputError, RuntimeFailure
from edgepilot.monitor.alerts import AlertEngine, AlertRule, AlertSink, MqttAlertSink
from edgepilot.monitor.readings import Sample, reading
from edgepilot.runtime.mqtt import MqttConfig
from edgepilot.runtime.outbox import Outbox

PRODUCER = Path(__file__).with_name("outbox_producer.py")


def event(eid: str, seq: int, **extra) -> str:
    return json.dumps({"event_id": eid, "seq": seq, **extra})


def first_arrivals(messages: list[tuple[str, object]]) -> list[str]:
    """event_ids in order of first arrival: what a consumer keeps after de-duplicating by event_id."""
    seen: dict[str, None] = {}
    for _, body in messages:
        if isinstance(body, dict) and "event_id" in body:
            seen.setdefault(body["event_id"], None)
    return list(seen)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def test_delivers_in_order_with_payload_intact(mosquitto, tmp_path):
    sub = Subscriber(mosquitto.port, "order/#")
    ids = [f"ev-{i:04d}" for i in range(300)]
    try:
        with Outbox(tmp_path / "o.db", MqttConfig(port=mosquitto.port)) as ob:
            for i, eid in enumerate(ids):
                assert ob.put("order/ev", event(eid, i, text="grüße ☃"), event_id=eid) == eid
            assert ob.put("order/raw", b"\x00\xffbinary") != ""  # bytes go out untouched, a uuid is made up
            assert ob.flush(20)
            st = ob.stats()
        msgs = sub.wait_for(lambda m: len(m) >= len(ids) + 1)
    finally:
        sub.close()
    assert first_arrivals(msgs) == ids
    assert len(msgs) == len(ids) + 1  # nothing was resent on a healthy connection
    bodies = [b for _, b in msgs if isinstance(b, dict)]
    assert [b["seq"] for b in bodies] == list(range(len(ids)))
    assert all(b["text"] == "grüße ☃" for b in bodies)
    assert ("order/raw", b"\x00\xffbinary") in msgs
    assert st["accepted"] == st["delivered"] == len(ids) + 1 and st["pending"] == 0 and st["connected"]


def test_put_is_idempotent_and_rejects_what_mqtt_cannot_carry(tmp_path):
    with Outbox(tmp_path / "o.db", MqttConfig(port=free_port()), reconnect_min_s=5) as ob:
        assert ob.put("a/b", "{}", event_id="same") == "same"
        assert ob.put("a/b", "{}", event_id="same") == "same"
        assert ob.pending() == 1 and ob.stats()["accepted"] == 1
        assert ob.put_many([("a/b", "{}", "m1"), ("a/c", b"{}", "m2"), ("a/b", "{}", "same")]) == ["m1", "m2", "same"]
        assert ob.pending() == 3
        for topic in ("", "a/+/b", "a/#"):
            with pytest.raises(InputError, match="topic"):
                ob.put(topic, "{}")
        with pytest.raises(InputError, match="bytes or str"):
            ob.put("a/b", 42)  # type: ignore[arg-type]
        with pytest.raises(InputError):  # one bad message refuses the whole batch
            ob.put_many([("a/b", "{}", "ok"), ("a/#", "{}", "bad")])
        assert ob.pending() == 3


def test_broker_outage_mid_run_loses_nothing(mosquitto, tmp_path):
    """Stop Mosquitto while events are being produced, keep producing, start it again on the same port.

    What the outbox guarantees is that every accepted event is PUBACKed by *a* broker, in order; whether a given
    subscriber sees it also depends on the subscriber. The broker runs without persistence, so the restarted one
    knows nothing of the subscriber's session: anything the outbox publishes before the subscriber has
    reconnected and re-subscribed is acknowledged and then dropped by the broker - honestly lost to that
    subscriber, not to the outbox. So the test orders the two reconnects, and checks that it did:
      - the outbox backs off 1.5 s then 3 s; the test waits until its first reconnect attempt has failed, so the
        next one is 3 s away;
      - only then it starts the broker; the subscriber (back-off capped at 1 s) is back and subscribed well
        before that, and the test asserts the outbox was still disconnected at that moment.
    From there every event - those in flight when the broker died, those accepted during the outage, those after
    - must reach the subscriber, each exactly once after de-duplication by event_id, in the order of `put`.
    Duplicates are allowed (a message in flight at the outage is resent: at-least-once)."""
    sub = Subscriber(mosquitto.port, "outage/#")
    ob = Outbox(tmp_path / "o.db", MqttConfig(port=mosquitto.port), reconnect_min_s=1.5, reconnect_max_s=3.0)
    ids: list[str] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            eid = f"out-{i:05d}"
            try:
                ob.put("outage/ev", event(eid, i), event_id=eid)
                ids.append(eid)
            except Exception as e:  # noqa: BLE001 (recorded and asserted on)
                errors.append(e)
            i += 1
            time.sleep(0.005)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        producer.start()
        sub.wait_for(lambda m: len(m) >= 50, timeout=10)
        mosquitto.stop()
        at_stop = len(ids)
        wait_until(lambda: not ob.stats()["connected"] and ob.stats()["connect_failures"] >= 1, 15,
                   "the outbox to fail its first reconnect")
        assert len(ids) > at_stop + 20, "puts must keep succeeding while the broker is down"
        assert ob.pending() > 0
        mosquitto.start()
        sub.wait_connected(timeout=5)  # reconnected by itself; includes time for the SUBACK
        assert not ob.stats()["connected"], "test precondition: the subscriber must be back before the outbox"
        wait_until(lambda: ob.stats()["connected"], 10, "the outbox to reconnect")
        time.sleep(0.3)  # and keep producing a little with everyone back
        stop.set()
        producer.join(5)
        assert ob.flush(20), ob.stats()
        msgs = sub.wait_for(lambda m: set(ids) <= set(first_arrivals(m)), timeout=20)
        st = ob.stats()
    finally:
        stop.set()
        ob.close()
        sub.close()
    assert not errors
    assert first_arrivals(msgs) == ids  # every event, once after de-dup, in put order
    assert st["reconnects"] >= 1 and st["delivered"] == st["accepted"] == len(ids) and st["pending"] == 0


@pytest.mark.parametrize("broker_up", [True, False], ids=["broker-up", "broker-down"])
def test_kill_9_and_restart_loses_nothing_accepted(mosquitto, tmp_path, broker_up):
    """A child process puts events and prints each event_id after `put` returned; it is SIGKILLed mid-run.
    Reopening its file with the broker up delivers every printed event (with the broker up in the child, part
    was already delivered, and what was in flight at the kill is resent)."""
    sub = Subscriber(mosquitto.port, "kill/#")
    db = tmp_path / "child.db"
    port = mosquitto.port if broker_up else free_port()
    child = subprocess.Popen([sys.executable, str(PRODUCER), str(db), str(port), "100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    printed: list[str] = []
    try:
        assert child.stdout is not None
        while len(printed) < 150:
            line = child.stdout.readline()
            assert line, f"the producer exited early with {child.poll()}"
            printed.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        printed += [ln.strip() for ln in child.stdout.read().splitlines() if ln.strip()]
        with Outbox(db, MqttConfig(port=mosquitto.port)) as ob:
            assert ob.flush(20), ob.stats()
        msgs = sub.wait_for(lambda m: set(printed) <= set(first_arrivals(m)), timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
        sub.close()
    got = first_arrivals(msgs)
    assert set(printed) <= set(got)
    assert len(got) - len(printed) <= 1  # at most the one put that was committing as the kill came
    assert got[:len(printed)] == printed  # in order


def _fill_until_full(ob: Outbox, prefix: str) -> tuple[list[str], RuntimeFailure]:
    ids = []
    for i in range(5000):
        eid = f"{prefix}-{i:04d}"
        try:
            ob.put("full/ev", event(eid, i, pad="x" * 1000), event_id=eid)
        except RuntimeFailure as e:
            return ids, e
        ids.append(eid)
    raise AssertionError("the outbox never reported a full disk")


def test_full_database_refuses_clearly_and_keeps_every_earlier_event(mosquitto, tmp_path):
    """`max_bytes` caps the file through SQLite's max_page_count: the real SQLITE_FULL path, on any machine."""
    db = tmp_path / "o.db"
    with Outbox(db, MqttConfig(port=free_port()), max_bytes=96 * 1024, reconnect_min_s=5) as ob:
        ids, err = _fill_until_full(ob, "cap")
        assert ob.pending() == len(ids) > 10
    assert str(db) in err.message and "full" in err.message and "kept" in (err.hint or "")
    sub = Subscriber(mosquitto.port, "full/#")
    try:
        with Outbox(db, MqttConfig(port=mosquitto.port), max_bytes=96 * 1024) as ob:
            assert ob.pending() == len(ids)
            assert ob.flush(20)
            ob.put("full/ev", event("after", -1), event_id="after")  # delivered rows made room again
            assert ob.flush(20)
        msgs = sub.wait_for(lambda m: len(first_arrivals(m)) >= len(ids) + 1)
    finally:
        sub.close()
    assert first_arrivals(msgs) == [*ids, "after"]


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_refuses_clearly_and_still_delivers(mosquitto, tmp_path, tiny_fs):
    """A real ENOSPC on a 256 KiB tmpfs. Even deleting delivered rows needs room (WAL frames), so delivery
    continues without it, and the rows are deleted once the disk has room again."""
    ballast = tiny_fs / "ballast"
    ballast.write_bytes(b"\0" * 64 * 1024)
    db = tiny_fs / "o.db"
    with Outbox(db, MqttConfig(port=free_port()), reconnect_min_s=5) as ob:
        ids, err = _fill_until_full(ob, "disk")
        assert ob.pending() == len(ids) > 0
    assert "full" in err.message and str(db) in err.message
    sub = Subscriber(mosquitto.port, "full/#")
    try:
        with Outbox(db, MqttConfig(port=mosquitto.port)) as ob:  # opening a full disk's outbox still works
            assert ob.flush(20), ob.stats()
            msgs = sub.wait_for(lambda m: set(ids) <= set(first_arrivals(m)))
            assert first_arrivals(msgs) == ids
            ballast.unlink()
            ob.put("full/ev", event("after", -1), event_id="after")
            assert ob.flush(20)
        with Outbox(db, MqttConfig(port=free_port()), reconnect_min_s=5) as ob:
            assert ob.pending() == 0  # the deletes went through once there was room: nothing will be resent
    finally:
        sub.close()
    assert first_arrivals(sub.messages)[-1] == "after"


def test_max_pending_refuses_instead_of_dropping(tmp_path):
    with Outbox(tmp_path / "o.db", MqttConfig(port=free_port()), max_pending=3, reconnect_min_s=5) as ob:
        for i in range(3):
            ob.put("p/ev", event(f"e{i}", i), event_id=f"e{i}")
        with pytest.raises(RuntimeFailure, match="max_pending=3") as exc:
            ob.put("p/ev", event("e3", 3), event_id="e3")
        assert "reachable" in (exc.value.hint or "")
        assert ob.pending() == 3
    with Outbox(tmp_path / "o.db", MqttConfig(port=free_port()), max_pending=4, reconnect_min_s=5) as ob:
        with pytest.raises(RuntimeFailure, match="2 new one"):  # a batch is accepted whole or not at all
            ob.put_many([("p/ev", event("e3", 3), "e3"), ("p/ev", event("e4", 4), "e4")])
        assert ob.pending() == 3


def test_corrupt_or_foreign_or_busy_file_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"definitely not SQLite " * 200)
    with pytest.raises(RuntimeFailure, match="corrupt") as exc:
        Outbox(corrupt, MqttConfig(port=free_port()))
    assert str(corrupt) in exc.value.message and "move it aside" in (exc.value.hint or "")

    foreign = tmp_path / "metrics.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE samples (ts REAL)")
    with pytest.raises(RuntimeFailure, match="not an edgepilot MQTT outbox"):
        Outbox(foreign, MqttConfig(port=free_port()))

    with Outbox(tmp_path / "o.db", MqttConfig(port=free_port()), reconnect_min_s=5):
        with pytest.raises(RuntimeFailure, match="already open"):
            Outbox(tmp_path / "o.db", MqttConfig(port=free_port()))
    Outbox(tmp_path / "o.db", MqttConfig(port=free_port()), reconnect_min_s=5).close()  # free again once closed


def test_unreachable_broker_keeps_accepting(tmp_path):
    port = free_port()  # nothing listens there
    with Outbox(tmp_path / "o.db", MqttConfig(port=port), reconnect_min_s=0.2, reconnect_max_s=0.4) as ob:
        for i in range(20):
            ob.put("u/ev", event(f"u{i}", i), event_id=f"u{i}")
        wait_until(lambda: ob.stats()["connect_failures"] >= 2, 10, "reconnect attempts")
        ob.put("u/ev", event("late", 20), event_id="late")
        st = ob.stats()
        assert not ob.flush(0.2)
    assert st["connected"] is False and st["pending"] == 21 and st["delivered"] == 0
    assert f"127.0.0.1:{port}" in st["last_error"]
    with Outbox(tmp_path / "o.db", MqttConfig(port=port), reconnect_min_s=5) as ob:
        assert ob.pending() == 21  # all still on disk for the next run


def test_alert_sink_sends_monitor_alerts_over_mqtt(mosquitto, tmp_path):
    sub = Subscriber(mosquitto.port, "edgepilot/alerts/#")
    try:
        with Outbox(tmp_path / "o.db", MqttConfig(port=mosquitto.port)) as ob:
            sink = MqttAlertSink(ob)
            assert isinstance(sink, AlertSink) and sink.name == "mqtt"
            engine = AlertEngine([AlertRule(name="hot", metric="temperature_celsius", above=80)], [sink])
            fired = engine.evaluate(Sample(1000.0, [reading("temperature_celsius", 91.5, "°C", "test")]))
            resolved = engine.evaluate(Sample(1001.0, [reading("temperature_celsius", 60.0, "°C", "test")]))
            sink.send(fired[0])  # the same alert again: same event_id, a consumer drops it
            assert ob.flush(20)
        msgs = sub.wait_for(lambda m: len(first_arrivals(m)) >= 2)
        sink.send(resolved[0])  # outbox closed: logged and counted, never raised into the monitor
        assert sink.failed == 1
    finally:
        sub.close()
    by_id = {b["event_id"]: (t, b) for t, b in msgs}  # type: ignore[index]
    assert set(by_id) == {MqttAlertSink.event_id(fired[0]), MqttAlertSink.event_id(resolved[0])}
    topic, body = by_id[MqttAlertSink.event_id(fired[0])]
    assert topic == "edgepilot/alerts/firing"
    assert body["rule"] == "hot" and body["state"] == "firing" and body["value"] == 91.5 and body["unit"] == "°C"
    assert by_id[MqttAlertSink.event_id(resolved[0])][0] == "edgepilot/alerts/resolved"


def test_a_row_mqtt_cannot_carry_is_set_aside_not_blocking(mosquitto, tmp_path):
    """`put` validates, but a file can be written by something else (an older version, a tool): a row paho refuses
    goes to the dead_letters table, kept, and the queue moves on."""
    db = tmp_path / "o.db"
    with Outbox(db, MqttConfig(port=free_port()), reconnect_min_s=5) as ob:
        ob.put("dl/ev", event("before", 0), event_id="before")
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO outbox (event_id, topic, payload, created) VALUES ('bad', 'dl/#', x'00', 0)")
    with Outbox(db, MqttConfig(port=free_port()), reconnect_min_s=5) as ob:
        ob.put("dl/ev", event("after", 1), event_id="after")
    sub = Subscriber(mosquitto.port, "dl/#")
    try:
        with Outbox(db, MqttConfig(port=mosquitto.port)) as ob:
            assert ob.flush(20)
            assert ob.stats()["dead_letters"] == 1
        msgs = sub.wait_for(lambda m: len(m) >= 2)
    finally:
        sub.close()
    assert first_arrivals(msgs) == ["before", "after"]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT event_id, topic FROM dead_letters").fetchall() == [("bad", "dl/#")]
