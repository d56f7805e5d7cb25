"""The runtime fails loudly: a decoder that does not fit the model is refused at start, `run --check` opens what a run
would, the exit code says when sources failed or events stayed undelivered, a deleted outbox is reported, and every
skipped input is counted."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgepilot.assets import asset
from edgepilot.errors import ConfigError
from edgepilot.runtime.pipeline import Pipeline, load_pipeline_config

EXE = [sys.executable, "-c", "from edgepilot.cli import main; main()"]
ROWS, CLASSES, SIZE = 64, 3, 16


def edgepilot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def yolo_model(path: Path, family: str) -> Path:
    """A YOLO-shaped ONNX head over a 16x16 image: yolov8 [1, 4+C, N] with sigmoid class scores, yolov5
    [1, N, 5+C] with sigmoid objectness and class scores; boxes are positive pixel values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    lead = 4 if family == "yolov8" else 5
    width = lead + CLASSES
    axis = 1 if family == "yolov8" else 2
    shape = [1, width, ROWS] if family == "yolov8" else [1, ROWS, width]
    w = np.random.default_rng(0).standard_normal((3 * SIZE * SIZE, width * ROWS)).astype(np.float32) * 0.05
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(shape, np.int64), "shape"),
             numpy_helper.from_array(np.array([4, width - 4], np.int64), "split"),
             numpy_helper.from_array(np.array(8.0, np.float32), "eight")]
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"]),
             helper.make_node("Reshape", ["y", "shape"], ["head"]),
             helper.make_node("Split", ["head", "split"], ["box", "logits"], axis=axis),
             helper.make_node("Abs", ["box"], ["size"]), helper.make_node("Add", ["size", "eight"], ["pixels"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("Concat", ["pixels", "scores"], ["output0"], axis=axis)]
    graph = helper.make_graph(nodes, family, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((24, 32, 3), 40 * i, np.uint8))
    return folder


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def yolo_config(tmp_path: Path, model: Path, postprocess: dict) -> dict:
    return {"name": "yolo", "model": {"path": str(model), "warmup": 1},
            "sources": [{"type": "folder", "id": "imgs", "path": str(images(tmp_path / "imgs"))}],
            "postprocess": postprocess, "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}]}


@pytest.fixture(scope="module")
def yolo_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("yolo")
    return {f: yolo_model(d / f"{f}.onnx", f) for f in ("yolov5", "yolov8")}


@pytest.mark.parametrize("family, postprocess, message", [
    ("yolov8", {"type": "yolov5"}, "objectness and class scores of output 'output0'.* should be scores in \\[0, 1\\]"),
    ("yolov5", {"type": "yolov8", "labels": ["a", "b", "c"]}, "holds 4 class\\(es\\) but 3 label\\(s\\)"),
    ("yolov8", {"type": "yolov8", "labels": ["a", "b"]}, "holds 3 class\\(es\\) but 2 label\\(s\\)"),
])
def test_a_decoder_that_does_not_fit_the_model_is_refused_at_start(tmp_path, yolo_models, family, postprocess,
                                                                    message):
    config = load_pipeline_config(write(tmp_path / "p.yaml", yolo_config(tmp_path, yolo_models[family],
                                                                          postprocess)))
    with pytest.raises(ConfigError, match=message):
        Pipeline(config)
    assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()


def test_the_matching_decoder_starts_and_runs(tmp_path, yolo_models):
    for family in ("yolov5", "yolov8"):
        cfg = yolo_config(tmp_path, yolo_models[family], {"type": family, "labels": ["a", "b", "c"]})
        summary = Pipeline(load_pipeline_config(write(tmp_path / "p.yaml", cfg))).run()
        assert summary["counters"]["completed"] == 2 and summary["counters"].get("errors", 0) == 0


@pytest.mark.parametrize("postprocess, message", [
    ({"type": "yolov8", "output": "regressors"}, "class scores of output 'regressors'.* range from"),
    ({"type": "blazeface", "labels": ["face", "cat"]}, "'classificators' holds 1 class\\(es\\) but 2 label"),
    ({"type": "ssd", "strides": [8, 16, 16, 16]}, "'classificators' should be scores in \\[0, 1\\].*sigmoid_score"),
])
def test_wrong_decoders_on_real_blazeface_are_one_line_start_errors(tmp_path, postprocess, message):
    cfg = {"name": "faces", "model": {"path": str(asset("blazeface-short-range", download=False)), "warmup": 0},
           "sources": [{"type": "folder", "path": str(images(tmp_path / "imgs"))}],
           "preprocess": {"resize": "letterbox", "color": "rgb", "normalize": "-1-1"},
           "postprocess": postprocess, "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}]}
    proc = edgepilot("run", str(write(tmp_path / "p.yaml", cfg)))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len([ln for ln in lines if "error" in ln.lower()]) == 1 and "Traceback" not in proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr


# --- exit codes -------------------------------------------------------------------------------------------------

ALWAYS = [{"name": "always", "when": {"min_count": 0, "max_count": 100000}, "actions": ["alert"]}]


def test_a_run_whose_every_source_failed_exits_non_zero(tmp_path, yolo_models):
    from brokers import free_port

    fast = {"max_retries": 2, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.1}
    cfg = yolo_config(tmp_path, yolo_models["yolov8"], {"type": "yolov8"})
    cfg["sources"] = [{"type": "stream", "id": "cam-rtsp", "url": f"rtsp://127.0.0.1:{free_port()}/live",
                       "open_timeout_s": 2, **fast},
                      {"type": "camera", "id": "usb", "device": 57, **fast}]  # no such camera: retried 2 times
    proc = edgepilot("run", str(write(tmp_path / "p.yaml", cfg)))
    assert proc.returncode == 1, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error: "))
    assert "every source failed" in line and "cam-rtsp: source cam-rtsp: no frames after 3 tries" in line \
        and "usb: source usb: no frames after 3 tries" in line and "Traceback" not in proc.stderr


def test_a_video_that_ends_early_as_damaged_exits_non_zero(tmp_path, yolo_models):
    writer = cv2.VideoWriter(str(tmp_path / "whole.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    rng = np.random.default_rng(0)
    for _ in range(30):
        writer.write(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    writer.release()
    data = (tmp_path / "whole.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])  # the header still says 30 frames
    cfg = yolo_config(tmp_path, yolo_models["yolov8"], {"type": "yolov8"})
    cfg["sources"] = [{"type": "video", "id": "cut", "path": str(tmp_path / "cut.avi")}]
    proc = edgepilot("run", str(write(tmp_path / "p.yaml", cfg)), "--json")
    assert proc.returncode == 1, proc.stderr
    assert "error: source cut: the file ended at frame 9 of 30 (damaged or truncated)" in proc.stderr
    import json

    assert json.loads(proc.stdout)["counters"]["completed"] == 9
    cfg["sources"] = [{"type": "video", "id": "whole", "path": str(tmp_path / "whole.avi")}]
    proc = edgepilot("run", str(write(tmp_path / "p.yaml", cfg)))
    assert proc.returncode == 0 and "error:" not in proc.stderr, proc.stderr


def test_events_left_undelivered_at_exit_are_counted_and_exit_non_zero(tmp_path, yolo_models):
    from brokers import Mosquitto, Subscriber

    broker = Mosquitto(tmp_path)  # not started yet: the broker is down
    cfg = yolo_config(tmp_path, yolo_models["yolov8"], {"type": "yolov8"})
    cfg["rules"] = ALWAYS
    cfg["sinks"] = [{"type": "mqtt", "mqtt": {"host": "127.0.0.1", "port": broker.port}, "drain_s": 0.5,
                     "outbox": str(tmp_path / "outbox.db")}]
    config = write(tmp_path / "p.yaml", cfg)
    proc = edgepilot("run", str(config))
    assert proc.returncode == 1, proc.stderr
    assert (f"error: 1 event message(s) not delivered: they wait in the MQTT outbox {tmp_path / 'outbox.db'} "
            "and go out on the next run") in proc.stderr
    broker.start()
    try:
        sub = Subscriber(broker.port, "edgepilot/#")
        proc = edgepilot("run", str(config))  # the kept event goes out, and this run's copy has the same id
        assert proc.returncode == 0, proc.stderr
        got = sub.wait_for(lambda m: len(m) >= 1, timeout=10)
        sub.close()
        assert {(m["rule"], m["event_id"]) for _, m in got} == {("always", got[0][1]["event_id"])}
    finally:
        broker.stop()


def test_the_stats_line_counts_every_skipped_image(tmp_path, yolo_models):
    folder = images(tmp_path / "imgs", n=3)
    whole = (folder / "000.png").read_bytes()
    (folder / "003.png").write_bytes(whole[:len(whole) // 2])  # truncated
    (folder / "004.png").write_bytes(b"")  # zero bytes
    (folder / "005.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = yolo_config(tmp_path, yolo_models["yolov8"], {"type": "yolov8"})
    proc = edgepilot("run", str(write(tmp_path / "p.yaml", cfg)), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "| done 3 dropped 0 skipped 3 errors 0" in proc.stderr.strip().splitlines()[-1]
    import json

    summary = json.loads(proc.stdout)
    assert summary["counters"]["skipped_input"] == 3 and summary["sources"]["imgs"]["skipped_input"] == 3


# --- run --check ------------------------------------------------------------------------------------------------

def test_run_check_loads_the_model_checks_the_decoder_and_opens_every_source(tmp_path, yolo_models):
    from brokers import free_port

    good = yolo_config(tmp_path, yolo_models["yolov8"], {"type": "yolov8", "labels": ["a", "b", "c"]})
    proc = edgepilot("run", str(write(tmp_path / "ok.yaml", good)), "--check")
    assert proc.returncode == 0, proc.stderr
    assert "valid (model yolov8.onnx on" in proc.stdout and "fits postprocess yolov8; 1 source(s) opened" in proc.stdout
    assert not (tmp_path / "out.jsonl").exists()  # nothing ran, no sink was opened

    bad = {"missing model": ({"model": {"path": str(tmp_path / "none.onnx")}}, 2, "none.onnx"),
           "missing video": ({"sources": [{"type": "video", "path": str(tmp_path / "none.mp4")}]}, 2,
                             "video file not found"),
           "wrong decoder": ({"postprocess": {"type": "yolov5"}}, 2, "should be scores in [0, 1]"),
           "closed stream": ({"sources": [{"type": "stream", "url": f"rtsp://127.0.0.1:{free_port()}/x",
                                           "open_timeout_s": 2}]}, 3, "cannot open it"),
           "no broker": ({"sources": [{"type": "mqtt", "topic": "t",
                                       "mqtt": {"host": "127.0.0.1", "port": free_port()}}]}, 3,
                         "cannot reach the MQTT broker")}
    for case, (change, code, message) in bad.items():
        proc = edgepilot("run", str(write(tmp_path / "bad.yaml", {**good, **change})), "--check")
        assert proc.returncode == code and "valid" not in proc.stdout, (case, proc.stderr)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]  # FFmpeg may chatter too
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr, (case, proc.stderr)


# --- the outbox file --------------------------------------------------------------------------------------------

def wait_until(predicate, timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_an_outbox_file_deleted_or_replaced_while_the_broker_is_down_is_reported_and_recreated(tmp_path, caplog,
                                                                                               how):
    from brokers import Mosquitto, Subscriber
    from edgepilot.runtime.mqtt import MqttConfig
    from edgepilot.runtime.outbox import Outbox

    broker, path = Mosquitto(tmp_path), tmp_path / "outbox.db"  # the broker is down
    with Outbox(path, MqttConfig(port=broker.port), reconnect_min_s=0.1, reconnect_max_s=0.2) as ob:
        for i in range(49):
            ob.put("alerts/x", f'{{"n": {i}}}', event_id=f"old-{i}")
        assert ob.pending() == 49
        if how == "replaced":  # another (empty) file moved in its place, in one step: a new inode
            (tmp_path / "other.db").write_bytes(b"")
            os.replace(tmp_path / "other.db", path)
        else:
            path.unlink()
        wait_until(lambda: ob.stats()["replaced"] == 1)  # the publisher notices without any new put
        st = ob.stats()
        assert st["lost"] == 49 and st["pending"] == 0 and "49 pending message(s) lost" in st["last_error"]
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any(f"outbox {path} was {how}" in m and "49 pending message(s) were lost" in m for m in errors), errors
        ob.put("alerts/x", '{"n": "new"}', event_id="new-0")  # into the new file
        assert sqlite_rows(path) == ["new-0"]
        broker.start()
        try:
            sub = Subscriber(broker.port, "alerts/#")
            ob.put("alerts/x", '{"n": "last"}', event_id="new-1")
            assert ob.flush(15)
            got = sub.wait_for(lambda m: {"n": "last"} in [b for _, b in m], timeout=10)
            sub.close()
        finally:
            broker.stop()
    # new-0 may have gone out before the subscriber was there; none of the 49 lost ones can come back
    assert [b for _, b in got] in ([{"n": "new"}, {"n": "last"}], [{"n": "last"}])


def sqlite_rows(path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT event_id FROM outbox ORDER BY id")]


# --- resume -----------------------------------------------------------------------------------------------------

def test_file_sources_with_resume_start_after_what_the_last_run_delivered(tmp_path, yolo_models):
    import json

    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(10):
        writer.write(np.full((24, 32, 3), 20 * i, np.uint8))
    writer.release()
    cfg = yolo_config(tmp_path, yolo_models["yolov8"], {"type": "yolov8"})
    cfg["sources"] = [{"type": "folder", "id": "imgs", "path": str(images(tmp_path / "imgs", n=6)), "resume": True},
                      {"type": "video", "id": "vid", "path": str(tmp_path / "v.avi"), "resume": True}]
    cfg["workdir"] = str(tmp_path / "state")
    out = tmp_path / "out.jsonl"
    config = write(tmp_path / "p.yaml", cfg)

    def delivered() -> dict[str, list]:
        rows = [json.loads(ln) for ln in out.read_text().splitlines()]
        out.unlink()
        return {"imgs": [Path(r["meta"]["path"]).name for r in rows if r["source"] == "imgs"],
                "vid": [r["meta"]["frame_index"] for r in rows if r["source"] == "vid"]}

    assert edgepilot("run", str(config), "--max-items", "7").returncode == 0
    first = delivered()
    assert len(first["imgs"]) + len(first["vid"]) == 7
    assert edgepilot("run", str(config)).returncode == 0  # "restart": each source goes on after its last item
    second = delivered()
    assert first["imgs"] + second["imgs"] == [f"{i:03d}.png" for i in range(6)]
    assert first["vid"] + second["vid"] == list(range(10))
    assert edgepilot("run", str(config)).returncode == 0 and delivered() == {"imgs": [], "vid": []}
    (tmp_path / "v.avi").touch()  # a changed file starts over
    os.utime(tmp_path / "v.avi", ns=(1, 1))
    assert edgepilot("run", str(config)).returncode == 0 and delivered()["vid"] == list(range(10))
