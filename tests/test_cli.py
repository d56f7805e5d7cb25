"""The `edgepilot` command as a user runs it: a real subprocess, JSON that parses, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgepilot.model import Format

EXE = [sys.executable, "-c", "from edgepilot.cli import main; main()"]


def edgepilot(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps tables at 80 columns when not on a terminal
    proc = subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=300, env=env)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_doctor_lists_all_engines():
    report = json.loads(edgepilot("doctor", "--json").stdout)
    engines = {e["name"]: e for e in report["engines"]}
    assert set(engines) == {"onnxruntime", "litert", "openvino", "tensorrt", "mnn", "ncnn", "tflite-micro"}
    for name in ("onnxruntime", "litert", "openvino", "mnn", "ncnn", "tflite-micro"):
        assert engines[name]["available"], engines[name]
    assert not engines["tensorrt"]["available"]  # no TensorRT and no GPU on this machine
    assert engines["tensorrt"]["detail"]
    assert report["host"]["logical_cores"] >= 1 and report["host"]["ram_bytes"] > 0
    passes = {p["name"]: p for p in report["passes"]}
    assert passes["tflite-to-onnx"]["from"] == ["tflite"] and passes["onnx-to-tflite"]["to"] == "tflite"
    assert all(p["available"] == (p["detail"] == "") for p in passes.values())
    torch_route = next(r for r in report["routes"] if r["from"] == "pytorch" and r["to"] == "tflite")
    assert "onnx-to-tflite" in torch_route["via"] and "litert-torch" in torch_route["detail"]


def test_doctor_table():
    out = edgepilot("doctor").stdout
    assert "Engines" in out and "tflite-micro" in out and "instruction sets" in out


@pytest.mark.parametrize("fmt", [Format.ONNX, Format.TFLITE, Format.OPENVINO, Format.MNN])
def test_inspect_and_bench(built, fmt):
    path = str(built(fmt, "cnn").path)
    info = json.loads(edgepilot("inspect", path, "--json").stdout)
    assert info["format"] == fmt.value
    (inp,), (out,) = info["inputs"], info["outputs"]
    assert inp["dtype"] == "float32" and sorted(d for d in inp["shape"][1:]) == [3, 32, 32]
    assert out["shape"][-1] == 10
    table = edgepilot("inspect", path).stdout
    assert "inputs" in table and ("[batch, 3, 32, 32]" in table or "[?, 3, 32, 32]" in table
                                  or "[batch, 32, 32, 3]" in table or "[?, 32, 32, 3]" in table)
    r = json.loads(edgepilot("bench", path, "--runs", "20", "--warmup", "2", "--threads", "1", "--json").stdout)
    lat = r["latency"]
    assert r["format"] == fmt.value and lat["runs"] == 20
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]


def test_bench_table(built):
    out = edgepilot("bench", str(built(Format.ONNX, "mlp").path), "--seconds", "0.2").stdout
    assert "p99 ms" in out and "onnxruntime" in out


def test_user_errors_are_one_line(tmp_path):
    notes = tmp_path / "notes.tflite"
    notes.write_text("hello")
    for args in (("inspect", str(notes)), ("bench", str(notes)), ("inspect", str(tmp_path / "missing.onnx")),
                 ("bench", str(notes), "--shape", "oops")):
        proc = edgepilot(*args, ok=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr


def test_unknown_engine_exit_code(built):
    proc = edgepilot("bench", str(built(Format.ONNX, "mlp").path), "--engine", "tvm", ok=False)
    assert proc.returncode == 3 and "unknown engine 'tvm'" in proc.stderr
