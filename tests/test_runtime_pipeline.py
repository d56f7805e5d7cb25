"""The runtime end to end, as users run it: a real face detector on real photos with MQTT alerts on a real broker,
a digit classifier whose rule raises then clears an alert, sensor JSON over MQTT, and bad input of every kind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from brokers import Subscriber
from edgepilot.errors import ConfigError
from edgepilot.runtime.pipeline import Pipeline, PipelineConfig, load_pipeline_config

EXE = [sys.executable, "-c", "from edgepilot.cli import main; main()"]


def edgepilot(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def read_video(path: Path) -> list[np.ndarray]:
    import cv2

    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    from edgepilot.demos.faces import make_face_video

    video = tmp_path_factory.mktemp("faces") / "faces.mp4"
    return video, make_face_video(video, download=False)


def test_blazeface_on_real_photos_boxes_video_and_mqtt_alerts(tmp_path, face_video, mosquitto):
    from edgepilot.demos.faces import pipeline_config

    video, truth = face_video
    sub = Subscriber(mosquitto.port, "edgepilot/faces/#")
    config = write_config(tmp_path / "pipeline.yaml", pipeline_config(tmp_path, video, ("127.0.0.1", mosquitto.port)))
    summary = Pipeline(load_pipeline_config(config)).run()
    assert summary["counters"]["completed"] == len(truth) == 105 and summary["counters"].get("errors", 0) == 0

    rows = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(len(truth)))
    hits = misses = false_alarms = 0
    for row, box in zip(rows, truth):
        dets = row["result"]["detections"]
        if box is None:
            false_alarms += bool(dets)
        elif dets and max(iou(d["box"], box) for d in dets) >= 0.5 and all(d["label"] == "face" for d in dets):
            hits += 1
        else:
            misses += 1
    faces = sum(b is not None for b in truth)
    assert hits >= 0.9 * faces, (hits, misses, faces)  # boxes on the face, in original-frame pixels
    assert false_alarms <= 2

    events = [e for r in rows for e in r.get("events", [])]
    assert [e["state"] for e in events] == ["raised", "cleared"] and events[0]["rule"] == "face-at-door"
    first_face = next(i for i, b in enumerate(truth) if b is not None)
    assert first_face + 2 <= events[0]["seq"] <= first_face + 6  # debounce: 3 frames with a face

    got = sub.wait_for(lambda m: len(m) >= 2, timeout=20)
    sub.close()
    assert [(t, m["event_id"], m["state"]) for t, m in got] == \
        [("edgepilot/faces/events", e["event_id"], e["state"]) for e in events]

    frames = read_video(tmp_path / "annotated.mp4")
    assert len(frames) == len(truth) and frames[0].shape == (480, 640, 3)
    snaps = list((tmp_path / "snapshots").glob("*.jpg"))
    assert len(snaps) == 2  # on: alerts — the raise and the clear
    log_lines = (tmp_path / "logs" / "edgepilot.jsonl").read_text().splitlines()
    assert any(json.loads(ln)["msg"].startswith("pipeline faces") for ln in log_lines)
    assert summary["outbox"]["pending"] == 0


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A small CNN trained on scikit-learn's 8x8 digits (torch, a few seconds), exported to ONNX, and the images
    it classifies confidently, by digit."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = net(x).softmax(1)
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    torch.onnx.export(net, x[:1], str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    confident = {k: [i for i in range(len(y)) if y[i] == k and p[i, k] > 0.95] for k in range(10)}
    return path, d.images, confident


def test_digit_classification_rule_raises_then_clears_an_alert(tmp_path, digits_model):
    import cv2

    model, images, confident = digits_model
    sequence = [1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 7, 7, 0, 8, 9, 1, 2, 3]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, digit in enumerate(sequence):
        img = images[confident[digit][i]]
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(img * 255 / 16, 0, 255).astype(np.uint8))
    cfg = {
        "name": "digits",
        "model": {"path": str(model), "engine": "onnxruntime"},
        "sources": [{"type": "folder", "id": "belt", "path": "frames"}],
        "preprocess": {"color": "gray", "normalize": "0-1"},
        "postprocess": {"type": "classification", "labels": [str(i) for i in range(10)], "top_k": 3},
        "rules": [{"name": "sevens", "when": {"label": 7, "min_confidence": 0.6},
                   "debounce": {"frames": 3}, "clear": {"frames": 3}, "actions": ["alert"],
                   "message": "{label} seen ({score:.2f}) on {source}"}],
        "sinks": [{"type": "jsonl", "path": "events.jsonl", "what": "events"},
                  {"type": "jsonl", "path": "results.jsonl", "what": "results"}],
    }
    proc = edgepilot("run", str(write_config(tmp_path / "digits.yaml", cfg)), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["counters"]["completed"] == len(sequence)

    top1 = [json.loads(ln)["result"]["classes"][0]["label"]
            for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert top1 == [str(d) for d in sequence]
    events = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["state"], e["seq"]) for e in events] == [("raised", 8), ("cleared", 14)]
    assert events[0]["message"].startswith("7 seen") and events[0]["severity"] == "warning"


def test_killed_edgepilot_loses_no_accepted_event(tmp_path, digits_model):
    """`edgepilot run` with its broker down is SIGKILLed; every event it had accepted (its JSONL sink runs after the
    MQTT sink, so a logged event is already in the outbox) arrives once the broker is up and edgepilot restarts."""
    import cv2

    from brokers import Mosquitto

    model, images, confident = digits_model
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(20):  # 7, 1, 7, 1 ...: with 1-frame debounce and clear, every frame raises or clears the alert
        digit = 7 if i % 2 == 0 else 1
        img = np.clip(images[confident[digit][i]] * 255 / 16, 0, 255).astype(np.uint8)
        cv2.imwrite(str(frames / f"{i:03d}.png"), img)
    broker = Mosquitto(tmp_path)  # a port, but no broker yet
    cfg = {
        "name": "belt", "model": {"path": str(model)},
        "sources": [{"type": "folder", "id": "belt", "path": "frames", "watch": True, "poll_s": 0.2}],
        "preprocess": {"color": "gray"},
        "postprocess": {"type": "classification", "labels": [str(i) for i in range(10)]},
        "scheduler": {"queue_size": 64},  # a watched folder is live: a short queue would drop its oldest frames
        "rules": [{"name": "sevens", "when": {"label": 7, "min_confidence": 0.6}, "actions": ["alert"]}],
        "sinks": [{"type": "mqtt", "mqtt": {"host": "127.0.0.1", "port": broker.port}, "outbox": "outbox.db"},
                  {"type": "jsonl", "path": "events.jsonl", "what": "events"}],
    }
    config = write_config(tmp_path / "belt.yaml", cfg)
    proc = subprocess.Popen([*EXE, "run", str(config)], stderr=subprocess.PIPE, text=True)
    events = tmp_path / "events.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (events.exists() and len(events.read_text().splitlines()) >= 12):
        time.sleep(0.1)
    proc.kill()
    _, err = proc.communicate()
    accepted = [json.loads(ln)["event_id"] for ln in events.read_text().splitlines()]
    assert len(accepted) >= 12, err[-2000:]

    broker.start()
    try:
        sub = Subscriber(broker.port, "edgepilot/belt/events")
        cfg["sources"][0]["path"] = "empty"  # the restart has nothing new to read: only the outbox's backlog
        (tmp_path / "empty").mkdir()
        write_config(config, cfg)
        rerun = edgepilot("run", str(config), "--duration", "3")
        assert rerun.returncode == 0, rerun.stderr
        got = sub.wait_for(lambda m: {b["event_id"] for _, b in m} >= set(accepted), timeout=20)
        sub.close()
    finally:
        broker.stop()
    ids = [b["event_id"] for _, b in got]
    assert set(ids) >= set(accepted)
    first_seen = list(dict.fromkeys(ids))
    assert first_seen[:len(accepted)] == accepted  # in the order they were accepted


def sensor_model(path: Path) -> Path:
    """A real ONNX model over two sensor values: y = [temperature, humidity] @ W (a linear score)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0], [0.1]], np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["score"])], "sensor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_mqtt_sensor_pipeline_skips_malformed_payloads_and_keeps_running(tmp_path, mosquitto):
    import paho.mqtt.client as mqtt

    cfg = {
        "name": "sensors",
        "model": {"path": str(sensor_model(tmp_path / "sensor.onnx"))},
        "sources": [{"type": "mqtt", "id": "room", "topic": "sensors/room",
                     "mqtt": {"host": "127.0.0.1", "port": mosquitto.port}}],
        "preprocess": {"fields": ["temperature", "humidity"]},
        "postprocess": {"type": "raw"},
        "rules": [{"name": "hot", "when": {"field": "temperature", "above": 30, "clear_below": 28},
                   "actions": ["alert"]}],
        "sinks": [{"type": "jsonl", "path": "out.jsonl"}],
    }
    pipeline = Pipeline(load_pipeline_config(write_config(tmp_path / "p.yaml", cfg)))
    import threading

    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(pipeline.run()))
    runner.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    time.sleep(1.0)  # the source subscribes
    payloads = [b'{"temperature": 25, "humidity": 40}', b"not json", b'{"temperature": "hot"}', b"\xff\xd8junk",
                b'{"temperature": 31.5, "humidity": 41}', b"[1, 2", b'{"temperature": 27, "humidity": 40}']
    for body in payloads:
        pub.publish("sensors/room", body, qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 15
    out = tmp_path / "out.jsonl"
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    pipeline.stop()
    runner.join(30)
    pub.loop_stop()
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["values"]["temperature"] for r in rows] == [25, 31.5, 27]
    assert rows[1]["result"]["raw"]["score"] == pytest.approx([31.5 + 4.1])
    assert [e["state"] for r in rows for e in r.get("events", [])] == ["raised", "cleared"]
    assert result["sources_detail"]["room"]["skipped_malformed"] == 4


def test_bad_input_gets_one_clear_line(tmp_path, face_video):
    video, _ = face_video
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nmodel:\n  path: m.tflite\nsources:\n  - type: video\n    path: a.mp4\n"
                        "scheduler:\n  max_batch: lots\n")
    proc = edgepilot("run", str(bad_yaml))
    assert proc.returncode == 2 and "bad.yaml:8: scheduler.max_batch" in proc.stderr and "Traceback" not in proc.stderr

    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    proc = edgepilot("run", str(tmp_path / "broken.yaml"))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr

    from edgepilot.demos.faces import pipeline_config

    (tmp_path / "not-a-video.mp4").write_text("hello")
    cfg = pipeline_config(tmp_path, tmp_path / "not-a-video.mp4")
    proc = edgepilot("run", str(write_config(tmp_path / "v.yaml", cfg)))
    assert proc.returncode == 2 and "not-a-video.mp4" in proc.stderr and "Traceback" not in proc.stderr

    cfg = pipeline_config(tmp_path, video)
    cfg["postprocess"] = {"type": "yolov8"}  # the wrong decoder for BlazeFace's outputs
    proc = edgepilot("run", str(write_config(tmp_path / "d.yaml", cfg)))
    assert proc.returncode == 2 and "yolov8" in proc.stderr and "regressors" in proc.stderr

    proc = edgepilot("run", str(write_config(tmp_path / "ok.yaml", pipeline_config(tmp_path, video))), "--check")
    assert proc.returncode == 0 and "valid" in proc.stdout


def test_the_runtime_runs_without_tensorflow_or_pytorch(tmp_path, face_video):
    """A device installs no TensorFlow and no PyTorch: block both imports and run the faces pipeline."""
    from edgepilot.demos.faces import pipeline_config

    video, truth = face_video
    config = write_config(tmp_path / "p.yaml", pipeline_config(tmp_path, video))
    blocker = ("import sys, importlib.abc\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('tensorflow', 'torch', 'keras', 'tf_keras'):\n"
               "            raise ImportError(f'{name} is blocked: a device has no TensorFlow or PyTorch')\n"
               "sys.meta_path.insert(0, Block())\n"
               "from edgepilot.cli import main; main()\n")
    proc = subprocess.run([sys.executable, "-c", blocker, "run", str(config), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counters"]["completed"] == len(truth)


def test_a_sensor_pipeline_runs_without_opencv(tmp_path):
    """A sensor-only device installs no vision extra: block cv2 and run a sensor pipeline to its end."""
    sensor_model(tmp_path / "m.onnx")
    (tmp_path / "s.csv").write_text("t,h\n21.0,40\n35.5,80\n")
    config = write_config(tmp_path / "p.yaml", {
        "name": "nocv", "model": {"path": "m.onnx"}, "sources": [{"type": "sensor", "path": "s.csv"}],
        "preprocess": {"fields": ["t", "h"]}, "postprocess": {"type": "raw"}, "sinks": []})
    blocker = ("import sys\nsys.modules['cv2'] = None\nfrom edgepilot.cli import main; main()\n")
    proc = subprocess.run([sys.executable, "-c", blocker, "run", str(config), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counters"]["completed"] == 2


def test_config_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg = write_config(tmp_path / "sub" / "p.yaml", {
        "model": {"path": "m.onnx"}, "sources": [{"type": "folder", "path": "imgs"}],
        "sinks": [{"type": "jsonl", "path": "out/r.jsonl"}, {"type": "mqtt", "outbox": "ob.db"}]})
    loaded = load_pipeline_config(cfg)
    assert isinstance(loaded, PipelineConfig)
    assert loaded.model.path == str(tmp_path / "sub" / "m.onnx")
    assert loaded.sources[0].path == str(tmp_path / "sub" / "imgs")
    assert loaded.sinks[0].path == str(tmp_path / "sub" / "out" / "r.jsonl")
    assert loaded.sinks[1].outbox == str(tmp_path / "sub" / "ob.db")


def test_a_scripted_model_drives_rules_and_a_failing_call_does_not_stop_the_pipeline(tmp_path):
    """The fake engine makes the model's behaviour exact: class 1 on frames 3..8, an exception on frame 10."""
    import cv2

    from edgepilot.engines.fake import FakeEngine, registered
    from edgepilot.errors import RuntimeFailure

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(14):  # the frame number is written into the pixels, so the script knows which frame it sees
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((8, 8), i * 10, np.uint8))

    def script(feeds):
        frame = int(round(float(next(iter(feeds.values())).reshape(-1)[0]) * 255 / 10))
        if frame == 10:
            raise RuntimeFailure("scripted failure")
        scores = np.zeros((1, 2), np.float32)
        scores[0, int(3 <= frame <= 8)] = 1.0
        return {"score": scores}

    model = tmp_path / "two.onnx"
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["flat"]),
                               helper.make_node("Slice", ["flat", "a", "b", "c"], ["score"])], "two",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.array([1, 64], np.int64), "s"),
                               *(numpy_helper.from_array(np.array([v], np.int64), n)
                                 for n, v in (("a", 0), ("b", 2), ("c", 1)))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(model))
    cfg = {
        "name": "scripted",
        "model": {"path": str(model), "engine": "fake", "warmup": 0},
        "sources": [{"type": "folder", "id": "belt", "path": "frames"}],
        "preprocess": {"color": "gray", "normalize": "0-1", "resize": "stretch"},
        "postprocess": {"type": "classification", "labels": ["no", "yes"], "top_k": 1},
        "rules": [{"name": "yes", "when": {"label": "yes", "min_confidence": 0.5},
                   "debounce": {"frames": 2}, "clear": {"frames": 2}, "actions": ["alert"]}],
        "sinks": [{"type": "jsonl", "path": "events.jsonl", "what": "events"}],
    }
    with registered(FakeEngine.scripted(script)):
        summary = Pipeline(load_pipeline_config(write_config(tmp_path / "p.yaml", cfg))).run()
        assert summary["counters"]["completed"] == 14 and summary["counters"]["errors"] == 1
        events = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
        # frame 10 failed, so it is neither a match nor a miss: 9 and 11 are the two misses that clear
        assert [(e["state"], e["seq"]) for e in events] == [("raised", 4), ("cleared", 11)]
        # a rerun over the same files emits the same events with the same ids: subscribers drop duplicates
        cfg["sinks"] = [{"type": "jsonl", "path": "again.jsonl", "what": "events"}]
        Pipeline(load_pipeline_config(write_config(tmp_path / "p.yaml", cfg))).run()
    again = [json.loads(ln) for ln in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [e["event_id"] for e in again] == [e["event_id"] for e in events]
    assert len({e["event_id"] for e in events}) == 2


def test_an_mqtt_action_without_an_mqtt_sink_is_a_config_error(tmp_path):
    cfg = {"model": {"path": "m.onnx"}, "sources": [{"type": "folder", "path": "frames"}],
           "rules": [{"name": "r", "when": {"label": "x"}, "actions": ["alert", {"mqtt": "alerts/x"}]}],
           "sinks": [{"type": "jsonl", "path": "out.jsonl"}]}
    with pytest.raises(ConfigError, match="no sink is of type mqtt"):
        load_pipeline_config(write_config(tmp_path / "p.yaml", cfg))
    cfg["sinks"].append({"type": "mqtt", "mqtt": {"host": "127.0.0.1", "port": 1883}})
    assert load_pipeline_config(write_config(tmp_path / "p.yaml", cfg)).rules[0].actions[1].target == "alerts/x"
