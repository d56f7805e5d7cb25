"""Input shapes: `--shape` parsing and checks, MACs at a concrete shape, and a model with dynamic H/W through
bench, optimize and run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from builders.dynamic import export_dynamic_hw, export_even_only, macs_at
from builders.onnx import export_onnx
from edgepilot.errors import ConfigError
from edgepilot.model import Model, TensorSpec
from edgepilot.shapes import parse_shapes, resolve_shapes, shapes_for

EXE = [sys.executable, "-c", "from edgepilot.cli import main; main()"]


def edgepilot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 and a single `error:` line naming `words`, no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for w in words:
        assert w in errors[0], errors[0]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A fully convolutional detector-like CNN with dynamic batch, height and width, and 64x64 data for it."""
    root = tmp_path_factory.mktemp("dynamic")
    path = export_dynamic_hw(root / "det.onnx")
    np.savez(root / "data.npz", x=np.random.default_rng(0).standard_normal((24, 3, 64, 64)).astype(np.float32))
    return path, root / "data.npz"


def test_parse_shapes_repeated_or_comma_separated():
    assert parse_shapes(["images=1x3x640x640", "mask=1X1x64x64,ids=2x5"]) == {
        "images": (1, 3, 640, 640), "mask": (1, 1, 64, 64), "ids": (2, 5)}
    for bad in (["oops"], ["x=1x0x3"], ["x=1xax3"], ["=1x3"], ["x=1x3", "x=1x4"]):
        with pytest.raises(ConfigError):
            parse_shapes(bad)


def test_resolve_shapes_checks_names_ranks_fixed_sizes_and_batch():
    dyn = [TensorSpec("images", "float32", ("batch", 3, "h", "w"))]
    fixed = [TensorSpec("x", "float32", (1, 3, 32, 32))]
    assert resolve_shapes(dyn, {"images": (2, 3, 64, 48)}) == {"images": (2, 3, 64, 48)}
    assert resolve_shapes(dyn, {"images": (4, 3, 8, 8)}, batch=4) == {"images": (4, 3, 8, 8)}
    assert resolve_shapes(fixed, {}) == {"x": (1, 3, 32, 32)}
    cases = [(dyn, {"imgs": (1, 3, 8, 8)}, None, "does not have"),
             (dyn, {"images": (1, 3, 8)}, None, "has 3 dims"),
             (dyn, {"images": (1, 4, 8, 8)}, None, "dimension 1 of input 'images' is fixed at 3"),
             (dyn, {"images": (2, 3, 8, 8)}, 4, "has batch 2 but --batch is 4"),
             (fixed, {}, 4, "fixed batch of 1"),
             (dyn, {}, None, "dynamic dimension 2")]
    for specs, shapes, batch, message in cases:
        with pytest.raises(Exception, match=message) as e:
            resolve_shapes(specs, shapes, batch)
        assert e.value.exit_code == 2


def test_shapes_follow_a_variant_by_name_else_by_position():
    variant = [TensorSpec("in0", "float32", ("batch", 3, None, None))]
    assert shapes_for(variant, {"images": (1, 3, 8, 8)}) == {"in0": (1, 3, 8, 8)}
    assert shapes_for([TensorSpec("images", "float32", None)], {"images": (1, 2)}) == {"images": (1, 2)}


def test_macs_at_a_concrete_shape_match_the_hand_count(detector):
    path, _ = detector
    m = Model.load(path)
    assert m.macs is None  # dynamic height and width: unknown, never counted as 1
    info = json.loads(edgepilot("inspect", str(path), "--shape", "images=1x3x64x64", "--json").stdout)
    assert info["macs"] == macs_at(64, 64) == 8 * 64 * 64 * 27 + 16 * 32 * 32 * 72 + 6 * 32 * 32 * 16
    assert info["meta"]["macs_at"] == {"images": [1, 3, 64, 64]}
    table = edgepilot("inspect", str(path), "--shape", "images=1x3x640x480").stdout
    assert f"MACs/sample: {macs_at(640, 480) / 1e6:.2f}M at images=1x3x640x480" in table
    assert "unknown (dynamic input size; give --shape images=" in edgepilot("inspect", str(path)).stdout
    static = Model.load(export_onnx("cnn", path.parent / "cnn.onnx"))  # a fixed size: counted as stored
    assert static.macs == 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 160
    assert static.meta["macs_at"] == {"input": [1, 3, 32, 32]}


def test_bench_runs_the_batch_it_reports_and_refuses_what_it_cannot(detector, tmp_path):
    path, _ = detector
    r = json.loads(edgepilot("bench", str(path), "--shape", "images=2x3x40x56", "--runs", "5", "--json").stdout)
    assert r["latency"]["batch"] == 2 and r["latency"]["shapes"] == {"images": [2, 3, 40, 56]}
    fixed = export_onnx("cnn", tmp_path / "fixed.onnx", dynamic_batch=False)
    one_line_error(edgepilot("bench", str(fixed), "--batch", "4"), "fixed batch of 1")
    one_line_error(edgepilot("bench", str(path), "--shape", "imgs=1x3x64x64"), "'imgs'", "its inputs: images")
    one_line_error(edgepilot("bench", str(path), "--shape", "images=2x3x64x64", "--batch", "4"),
                   "has batch 2 but --batch is 4")
    one_line_error(edgepilot("inspect", str(path), "--shape", "imgs=1x3x64x64"), "'imgs'")
    one_line_error(edgepilot("bench", str(path)), "dynamic dimension", "--shape images=")


@pytest.mark.slow
def test_a_dynamic_model_gets_a_latency_for_every_variant(detector, tmp_path):
    path, data = detector
    out = tmp_path / "out"
    proc = edgepilot("optimize", str(path), "--data", str(data), "--formats", "onnx,openvino,mnn,ncnn",
                     "--out", str(out), "--seconds", "0.1", "--eval-samples", "8", "--calibration-samples", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads((out / "report.json").read_text())["variants"]}
    assert {"onnx-fp32", "openvino-fp32", "mnn-fp32", "ncnn-fp32", "ncnn-fp16"} <= set(rows)
    for r in rows.values():
        assert r["error"] is None, r
        lat = r["latency"]
        assert lat and 0 < lat["p50_ms"] <= lat["p99_ms"], r
        assert list(lat["shapes"].values()) == [[1, 3, 64, 64]], r  # the data's sample shape, batch 1
    lineage = {v["variant"]: v for v in json.loads((out / "lineage.json").read_text())["variants"]}
    assert lineage["ncnn-fp32"]["status"] == "ok"


def test_optimize_shape_errors_stop_before_any_variant(detector, tmp_path):
    path, data = detector
    out = tmp_path / "out"
    one_line_error(edgepilot("optimize", str(path), "--data", str(data), "--shape", "imgs=1x3x64x64",
                             "--formats", "openvino", "--out", str(out)), "'imgs'")
    one_line_error(edgepilot("optimize", str(path), "--data", str(data), "--shape", "images=1x3x32x32",
                             "--formats", "openvino", "--out", str(out)), "do not fit input 'images'")
    even = export_even_only(tmp_path / "even.onnx")  # data of odd size fits the spec but not the model
    np.savez(tmp_path / "odd.npz", x=np.zeros((4, 3, 63, 63), np.float32))
    one_line_error(edgepilot("optimize", str(even), "--data", str(tmp_path / "odd.npz"), "--formats", "openvino",
                             "--out", str(out)), "cannot run on samples of shape [3, 63, 63]")
    assert not (out / "variants").exists()


def test_recipe_input_shapes(detector, tmp_path):
    path, data = detector
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {path}\ndata: {data}\nformats: [ncnn]\nout: {tmp_path / 'out'}\nseconds: 0.1\n"
                      "eval_samples: 4\ncalibration_samples: 4\ninput_shapes: {images: [1, 3, 64, 64]}\n")
    proc = edgepilot("optimize", "--recipe", str(recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())["variants"]}
    assert rows["ncnn-fp32"]["latency"]["shapes"] == {"in0": [1, 3, 64, 64]}
    recipe.write_text(f"model: {path}\ndata: {data}\ninput_shapes: {{images: [1, 0, 64, 64]}}\n")
    one_line_error(edgepilot("optimize", "--recipe", str(recipe)), "r.yaml:3: input_shapes")


def test_run_a_dynamic_model_at_the_given_or_preprocess_size(detector, tmp_path):
    import cv2
    import yaml

    path, _ = detector
    (tmp_path / "frames").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "frames" / f"{i}.png"), np.full((30, 40, 3), 60 * i, np.uint8))
    cfg = {"model": {"path": str(path), "engine": "onnxruntime"}, "sources": [{"type": "folder", "path": "frames"}],
           "postprocess": {"type": "raw"}, "sinks": [{"type": "jsonl", "path": "out.jsonl", "what": "results"}]}
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(cfg))
    one_line_error(edgepilot("run", str(config)), "dynamic size", "preprocess.size")
    proc = edgepilot("run", str(config), "--shape", "images=1x3x48x64", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["counters"]["completed"] == 3
    results = [json.loads(ln)["result"] for ln in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(results) == 3
    one_line_error(edgepilot("run", str(config), "--shape", "imgs=1x3x48x64"), "'imgs'")
    cfg["preprocess"] = {"size": [64, 48]}  # warm-up at the preprocess size, without input_shapes
    config.write_text(yaml.safe_dump(cfg))
    proc = edgepilot("run", str(config), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["counters"]["completed"] == 3, proc.stderr[-2000:]


def test_tflite_macs_at_a_concrete_shape(tmp_path):
    import keras
    import tensorflow as tf

    from edgepilot.formats import macs_at as count

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(8, 3, padding="same"),
                            keras.layers.Conv2D(16, 3, strides=2, padding="same")])
    path = tmp_path / "dyn.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
    m = Model.load(path)
    assert m.macs is None  # the stored sizes of a dynamic TFLite tensor are placeholders of 1
    name = m.inputs[0].name
    assert count(m, {name: (1, 64, 48, 3)}) == (8 * 64 * 48 * 27 + 16 * 32 * 24 * 72, {name: [1, 64, 48, 3]})
