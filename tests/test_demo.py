"""`edgepilot demo` end to end: a trained model, every engine here, accuracy and latency for each."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgepilot.engines import all_engines


@pytest.mark.slow
def test_demo_runs_every_available_engine(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", "demo",
                           "--out", str(out), "--seconds", "0.2", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    measured = [r for r in rows if not r["error"]]
    available = {n for n, e in all_engines().items() if e.available()[0]}
    assert {r["engine"] for r in measured} == available
    assert {r["format"] for r in measured} >= {"tflite", "onnx", "openvino", "mnn", "ncnn"}
    for r in measured:
        assert r["accuracy"] >= 0.9, r  # a trained model, converted faithfully
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["peak_rss_mb"] > 0 and r["size_kib"] > 0
    # the only failures are TFLite Micro refusing hybrid / float16 models, each with its reason
    for r in rows:
        if r["error"]:
            assert r["engine"] == "tflite-micro" and "TFLite Micro cannot load it" in r["error"], r
    assert "| tflite-int8 | tflite-micro |" in (out / "results.md").read_text()
    assert "digits CNN" in proc.stdout
