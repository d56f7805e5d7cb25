"""The dashboard, loaded in a real headless Chromium, shows live data from a running pipeline: the latest frame
with the real BlazeFace detector's boxes over it, fps and system charts, the models served and the alerts raised."""
from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest
import yaml

from brokers import free_port
from browser import CHROMIUM, Browser
from edgepilot.assets import asset
from edgepilot.errors import UnavailableError

pytest.importorskip("cv2")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def blazeface():
    try:
        return asset("blazeface-short-range", download=False)
    except UnavailableError as e:
        pytest.skip(str(e))


def test_the_dashboard_shows_live_boxes_charts_models_and_alerts(tmp_path, blazeface):
    from edgepilot.demos.faces import make_face_video, pipeline_config
    from edgepilot.runtime.pipeline import Pipeline, load_pipeline_config

    make_face_video(tmp_path / "faces.mp4", download=False)
    (tmp_path / "models" / "faces" / "1").mkdir(parents=True)
    shutil.copy(blazeface, tmp_path / "models" / "faces" / "1" / "model.tflite")
    port = free_port()
    cfg = pipeline_config(tmp_path, tmp_path / "faces.mp4")
    cfg["sources"][0].update(loop=True, realtime=True)
    cfg.update(sinks=[], logging=None, server={"port": port, "models": str(tmp_path / "models")})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    pipeline = Pipeline(load_pipeline_config(tmp_path / "p.yaml"))
    runner = threading.Thread(target=pipeline.run, kwargs={"duration": 180})
    runner.start()
    browser = None
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):  # the server starts with the pipeline
            try:
                if httpx.get(f"{url}/dashboard/api/state").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            threading.Event().wait(0.1)
        browser = Browser(f"{url}/dashboard", tmp_path / "chromium")
        # a frame drawn with at least one face box from a result the WebSocket delivered
        browser.wait_for("window.dashboard && dashboard.boxesDrawn > 0 && dashboard.resultsReceived > 0", 90)
        browser.wait_for("dashboard.events.some(e => e.rule === 'face-at-door' && e.state === 'raised')", 90)
        browser.wait_for("dashboard.history.fps.filter(v => v > 0).length >= 2", 30)
        # the numbers shown are the latest poll's, and a poll may lack a reading: wait for both to show one
        browser.wait_for("['v-fps', 'v-cpu'].every(id => !isNaN(parseFloat(document.getElementById(id).textContent)))",
                         30)
        page = browser.evaluate("""({
            fps: document.getElementById('v-fps').textContent,
            cpu: document.getElementById('v-cpu').textContent,
            models: document.getElementById('models').textContent,
            result: document.getElementById('result').textContent,
            source: document.getElementById('source').value,
            connection: document.getElementById('connection').textContent,
            events: document.getElementById('events').textContent,
        })""")
        browser.screenshot(tmp_path / "dashboard.png")
    finally:
        if browser is not None:
            browser.close()
        pipeline.stop()
        runner.join(60)
    assert float(page["fps"]) > 0 and float(page["cpu"]) >= 0
    assert "faces" in page["models"] and "READY" in page["models"]
    assert page["source"] == "door" and "face" in page["result"] and page["connection"] == "live"
    assert "face-at-door" in page["events"]
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_the_dashboard_api_answers_without_a_pipeline_and_refuses_unknown_files(tmp_path):
    from servers import linear_onnx, serving

    linear_onnx(tmp_path / "models" / "linear" / "1" / "model.onnx")
    with serving(tmp_path / "models") as server:
        page = httpx.get(f"{server.url}/dashboard")
        for _ in range(50):  # a CPU percentage needs a window of time after the monitor starts
            state = httpx.get(f"{server.url}/dashboard/api/state").json()
            if any(r["metric"] == "cpu_percent" for r in state["system"]["readings"]):
                break
            time.sleep(0.1)
        frame = httpx.get(f"{server.url}/dashboard/api/frame", params={"source": "nope"})
        missing = httpx.get(f"{server.url}/dashboard/static/../app.py")
        other = httpx.get(f"{server.url}/dashboard/static/secret.txt")
        metrics = httpx.get(f"{server.url}/metrics").text
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert state["pipeline"] is None and state["frames"] == {} and state["events"] == []
    assert [(m["name"], m["state"]) for m in state["models"]] == [("linear", "READY")]
    assert any(r["metric"] == "cpu_percent" for r in state["system"]["readings"])
    assert frame.status_code == 404 and "no frame" in frame.json()["error"]
    assert missing.status_code == 404 and other.status_code == 404
    assert "edgepilot_cpu_percent" in metrics  # the monitor's system gauges are in /metrics too
