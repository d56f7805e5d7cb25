"""`server:` in a pipeline YAML: `edgepilot run` streams results and events over a WebSocket and shows the
pipeline in /metrics while it runs."""
from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import yaml

from brokers import free_port
from edgepilot.engines.fake import FakeEngine, registered
from edgepilot.runtime.pipeline import Pipeline, load_pipeline_config

cv2 = pytest.importorskip("cv2")
ws_client = pytest.importorskip("websockets.sync.client")


def _script(feeds):
    """Class 1 ("yes") when the frame is bright, so the test decides which frames raise the alert."""
    bright = float(next(iter(feeds.values())).mean()) > 0.5
    return {"output": np.array([[0.0, 1.0, 0.0]] if bright else [[1.0, 0.0, 0.0]], np.float32)}


def image_onnx(path):
    """x [1, 1, 2, 2] (a gray 2x2 image) -> output [1, 3]; the fake engine answers for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["output"])],
        "image", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_a_websocket_client_receives_the_pipelines_results_and_events(tmp_path):
    image_onnx(tmp_path / "m.onnx")
    (tmp_path / "frames").mkdir()
    port = free_port()
    cfg = {
        "name": "streamed",
        "model": {"path": "m.onnx", "engine": "fake-stream", "warmup": 0},
        "sources": [{"type": "folder", "id": "belt", "path": "frames", "watch": True, "poll_s": 0.05}],
        "preprocess": {"color": "gray", "normalize": "0-1", "resize": "stretch"},
        "postprocess": {"type": "classification", "labels": ["no", "yes", "maybe"], "top_k": 1},
        "rules": [{"name": "bright", "when": {"label": "yes", "min_confidence": 0.5}, "actions": ["event"]}],
        "sinks": [],
        "server": {"port": port},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    with registered(FakeEngine.scripted(_script, name="fake-stream")):
        pipeline = Pipeline(load_pipeline_config(tmp_path / "p.yaml"))
        runner = threading.Thread(target=pipeline.run, kwargs={"duration": 60})
        runner.start()
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    ws = ws_client.connect(f"ws://127.0.0.1:{port}/stream?source=belt&what=all")
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the pipeline's server did not start"
                    time.sleep(0.1)
            with ws:
                assert json.loads(ws.recv(timeout=10)) == {"type": "subscribed", "source": "belt", "what": "all"}
                for i, level in enumerate((0, 255, 0)):
                    cv2.imwrite(str(tmp_path / "frames" / f"{i:03d}.png"), np.full((4, 4), level, np.uint8))
                messages = []
                while len([m for m in messages if m["type"] == "result"]) < 3:
                    messages.append(json.loads(ws.recv(timeout=20)))
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            pipeline.stop()
            runner.join(60)
    results = [m for m in messages if m["type"] == "result"]
    assert [r["result"]["classes"][0]["label"] for r in results] == ["no", "yes", "no"]
    assert [r["seq"] for r in results] == [0, 1, 2] and {r["source"] for r in results} == {"belt"}
    events = [m for m in messages if m["type"] == "event"]
    assert [(e["rule"], e["seq"]) for e in events] == [("bright", 1)]
    assert 'edgepilot_pipeline_items_total{what="completed"}' in metrics


def test_the_pipelines_served_model_follows_the_pipelines_spin_wait(tmp_path):
    """Its instance shares the cores of the decoder and the stages: its idle threads spin only as the pipeline's do."""
    image_onnx(tmp_path / "m.onnx")
    (tmp_path / "frames").mkdir()
    cfg = {"name": "spun", "model": {"path": "m.onnx", "warmup": 0},
           "sources": [{"type": "folder", "id": "belt", "path": "frames"}],
           "preprocess": {"color": "gray", "normalize": "0-1", "resize": "stretch"},
           "postprocess": {"type": "classification"}, "sinks": [],
           "server": {"port": free_port(), "serve_model": True}}
    for spin in (True, False):
        (tmp_path / "p.yaml").write_text(yaml.safe_dump({**cfg, "scheduler": {"spin_wait": spin}}))
        pipeline = Pipeline(load_pipeline_config(tmp_path / "p.yaml"))
        try:
            assert pipeline.plan.spin_wait is spin and pipeline.server.app.state.repo.get("spun").spin_wait is spin
        finally:
            pipeline.run(duration=5)  # an empty folder: it ends at once, closing the server and the sessions
