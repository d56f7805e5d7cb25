"""`edgepilot demo` end to end (on the offline digits): a trained model, every engine here, one report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgepilot.engines import all_engines


@pytest.mark.slow
def test_demo_builds_and_measures_every_family(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", "demo", "--dataset",
                           "digits", "--epochs", "8", "--out", str(out), "--seconds", "0.2", "--threads", "1"],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    assert len(rows) >= 12
    assert {r["format"] for r in rows.values()} >= {"tflite", "onnx", "openvino", "mnn", "ncnn"}
    available = {n for n, e in all_engines().items() if e.available()[0]}
    assert {r["engine"] for r in rows.values()} <= available
    for r in rows.values():
        assert r["error"] is None, r
        assert r["top1"] >= 0.85, r  # a trained model, converted faithfully
        assert r["agreement"]["value"] >= 0.97, r  # top-1 agreement with the reference
        assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] and r["peak_rss_mb"] > 0
    assert rows["tflite-int8"]["arena_bytes"] > 0  # TFLite Micro measured the arena an MCU would need
    lineage = json.loads((out / "lineage.json").read_text())
    for v in lineage["variants"]:  # only what cannot run here (TensorRT without a GPU) is skipped, with why
        assert v["status"] == "ok" or (v["status"] == "skipped" and "TensorRT" in v["reason"]), v
    assert "micro-int8" in rows and rows["micro-int8"]["engine"] == "tflite-micro"
    assert (out / "report.html").read_text().count("<img") == 6  # task metric, accuracy, latency, size, Pareto, bits
    assert "trained the article's CNN" in proc.stdout and "report:" in proc.stdout
    # third-party output (MNN's "MNN use ... precision", TensorFlow's logs) is in the demo's log, not on the console
    console = (proc.stdout + proc.stderr).splitlines()
    assert not [ln for ln in console if "MNN use" in ln or "tensorflow" in ln.lower()], console
    assert "MNN use" in (out / "demo.log").read_text()


def test_faces_demo_runs_with_its_default_relative_out(tmp_path):
    """`make demo` runs `edgepilot demo faces` with the default, cwd-relative `workspace/faces`."""
    proc = subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", "demo", "faces"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "workspace" / "faces"
    frames = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    frames = [f for f in frames if "result" in f]
    assert len(frames) == 105 and sum(bool(f["result"]["detections"]) for f in frames) >= 40
    assert "2 event(s)" in proc.stdout and (out / "annotated.mp4").stat().st_size > 0
