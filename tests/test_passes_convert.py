"""Every source reaches every runtime: TFLite ↔ ONNX, LiteRT's quantiser on TFLite sources, PyTorch → TFLite.

Round trips on the tiny fixture models, then the real BlazeFace (a TFLite detector with fp16 weights) and
PaddleOCR's direction classifier (ONNX) through `optimize`.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess

import numpy as np
import pytest

from builders import keras_model, sample, torch_model, torch_reference
from builders.onnx import export_onnx
from edgepilot import catalog
from edgepilot.assets import asset
from edgepilot.engines import open_session
from edgepilot.errors import InputError
from edgepilot.formats.tflite_edit import modernize, weight_precision
from edgepilot.model import Format, Model
from edgepilot.optimize import plan, run_plan
from edgepilot.passes import PassContext, get_pass

pytest.importorskip("ai_edge_litert")
needs_onnx2tf = pytest.mark.skipif(importlib.util.find_spec("onnx2tf") is None, reason="onnx2tf is not installed")
needs_quantizer = pytest.mark.skipif(importlib.util.find_spec("ai_edge_quantizer") is None,
                                     reason="ai-edge-quantizer is not installed")


def run_pass(name, model, workdir, calibration=None, shapes=None, **options):
    p = get_pass(name)
    ctx = PassContext(workdir, calibration=calibration, input_shapes=shapes)
    assert p.why_not(model, ctx) == []
    out = p.run(model, p.options(**options), ctx)
    assert out.format == p.produces
    return out, ctx


def infer(model, x, engine=None):
    with open_session(model, engine, threads=1) as s:
        return s.run({s.inputs[0].name: x})[s.outputs[0].name]


def blazeface() -> Model:
    return Model.load(asset("blazeface-short-range", download=False))


def faces(n: int = 8) -> np.ndarray:
    """Real photos letterboxed into BlazeFace's 128×128 RGB input, -1..1 as MediaPipe feeds it."""
    import cv2

    xs = []
    for photo in ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick"):
        frame = cv2.imread(str(asset(f"photo-{photo}", download=False)), cv2.IMREAD_COLOR)
        for crop in (frame, frame[: frame.shape[0] * 3 // 4, : frame.shape[1] * 3 // 4]):
            s = 128 / max(crop.shape[:2])
            img = cv2.resize(crop, (round(crop.shape[1] * s), round(crop.shape[0] * s)), interpolation=cv2.INTER_AREA)
            canvas = np.zeros((128, 128, 3), np.uint8)
            canvas[:img.shape[0], :img.shape[1]] = img
            xs.append(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0)
    return np.stack(xs[:n])


@pytest.fixture(scope="module")
def tflite_cnn(built):
    return Model.load(built(Format.TFLITE, "cnn").path)


# --- honest labels and the flatbuffer rewrite ------------------------------------------------------------------


def test_a_tflite_source_is_labelled_by_the_precision_of_its_weights(tflite_cnn):
    face = blazeface()
    assert catalog.source_precision(face) == "fp16" and catalog.source_variant(face) == "tflite-fp16"
    assert catalog.source_variant(tflite_cnn) == "tflite-fp32"
    steps = {s.variant: s for s in plan(face)}
    assert "tflite-fp16" not in steps  # the source already is it
    assert steps["tflite-fp32"].pass_name == "tflite-widen" and steps["onnx-fp32"].source == "tflite-fp32"
    assert steps["tflite-int8"].pass_name == "tflite-quantize"


def test_widening_fp16_weights_changes_no_output(tmp_path):
    face = blazeface()
    out, ctx = run_pass("tflite-widen", face, tmp_path)
    assert weight_precision(out.path.read_bytes()) == "fp32" and "DEQUANTIZE" not in out.meta["ops"]
    assert ctx.notes["fp16_weights_widened"] > 50 and ctx.notes["op_codes_fixed"] > 0
    for x in faces(3):
        with open_session(face, "litert") as s:
            want = s.run({"input": x[None]})
        with open_session(out, "litert") as s:
            got = s.run({"input": x[None]})
        for o in face.outputs:  # fp16 → fp32 is exact: the kernels compute with the same numbers
            np.testing.assert_allclose(got[o.name], want[o.name], rtol=0, atol=1e-5)
    buf, changes = modernize(out.path.read_bytes())  # a second rewrite finds nothing left to do
    assert changes == {"op_codes_fixed": 0, "fp16_weights_widened": 0, "signature_added": 0}


# --- tflite-quantize (ai-edge-quantizer) on the fixture CNN ------------------------------------------------------


@needs_quantizer
@pytest.mark.parametrize("precision,label,tol", [("dynamic", "dynamic-int8", 0.05),
                                                 ("int8-weights", "int8-weights", 0.02),
                                                 ("float16", "fp16", 0.01), ("int8", "int8", 0.1)])
def test_tflite_quantize_round_trip(tflite_cnn, tmp_path, precision, label, tol):
    calib = {"input": sample("cnn", batch=32, layout="nhwc")}
    out, ctx = run_pass("tflite-quantize", tflite_cnn, tmp_path, calibration=calib, precision=precision)
    assert weight_precision(out.path.read_bytes()) == label
    assert catalog.source_variant(out) == {"dynamic-int8": "tflite-dynamic"}.get(label, f"tflite-{label}")
    x = sample("cnn", batch=4, layout="nhwc")
    ref = keras_model("cnn")(x).numpy()
    got = np.concatenate([infer(out, x[i:i + 1]) for i in range(len(x))])
    assert np.abs(got - ref).max() <= tol * np.ptp(ref)
    assert out.size_bytes < tflite_cnn.size_bytes
    if precision == "int8":
        assert out.inputs[0].dtype == "int8" and ctx.notes["calibration_samples"] == 32
        micro, _ = run_pass("tflite-to-micro", out, tmp_path / "micro")  # TFLite Micro from the int8 result
        assert micro.meta["arena_bytes"] > 0


@needs_quantizer
def test_tflite_quantize_refuses_what_it_cannot_take(tflite_cnn, tmp_path):
    p = get_pass("tflite-quantize")
    with pytest.raises(InputError, match="calibration data missing"):
        p.run(tflite_cnn, p.options(precision="int8"), PassContext(tmp_path))
    int8, _ = run_pass("tflite-quantize", tflite_cnn, tmp_path / "q", calibration={"input": sample(
        "cnn", batch=8, layout="nhwc")}, precision="int8")
    assert any("already quantised (int8)" in r for r in p.why_not(int8, PassContext(tmp_path)))
    widen = get_pass("tflite-widen")
    assert any("their float originals are lost" in r for r in widen.why_not(int8, PassContext(tmp_path)))


@needs_quantizer
def test_tflite_quantize_can_keep_a_detector_head_in_float(tmp_path):
    from edgepilot.formats.tflite_edit import head_tensors

    face = blazeface()
    head = head_tensors(face.path.read_bytes())
    assert {"regressors", "classificators"} <= set(head) and len(head) < 20  # the outputs back to the last convs
    out, ctx = run_pass("tflite-quantize", face, tmp_path, calibration={"input": faces(8)}, precision="int8",
                        float_head=True)
    assert ctx.notes["float_head_tensors"] == len(head)
    assert [o.dtype for o in out.outputs] == ["float32", "float32"] and out.inputs[0].dtype == "int8"
    assert weight_precision(out.path.read_bytes()) == "int8"


# --- TFLite → ONNX (tf2onnx) ---------------------------------------------------------------------------------------


def test_tflite_to_onnx_round_trip(tflite_cnn, tmp_path):
    out, _ = run_pass("tflite-to-onnx", tflite_cnn, tmp_path)
    x = sample("cnn", batch=1, layout="nhwc")  # tf2onnx keeps the TFLite layout
    np.testing.assert_allclose(infer(out, x, "onnxruntime"), infer(tflite_cnn, x, "litert"), atol=1e-4)


def test_tflite_to_onnx_frees_a_fixed_batch_of_one(tmp_path):
    fp32, _ = run_pass("tflite-widen", blazeface(), tmp_path / "fp32")
    out, ctx = run_pass("tflite-to-onnx", fp32, tmp_path / "onnx")
    assert ctx.notes["dynamic_batch"] is True and out.inputs[0].shape == ("batch", 128, 128, 3)
    x = faces(3)
    with open_session(out, "onnxruntime") as s:  # one run of 3 gives what 3 runs of 1 give
        together = s.run({"input": x})
        alone = [s.run({"input": x[i:i + 1]}) for i in range(3)]
    with open_session(fp32, "litert") as s:
        want = s.run({"input": x[:1]})
    for name, got in together.items():
        np.testing.assert_allclose(got, np.concatenate([a[name] for a in alone]), atol=1e-5)
        np.testing.assert_allclose(got[:1], want[name], atol=1e-3, rtol=1e-4)


# --- ONNX → TFLite (onnx2tf) ---------------------------------------------------------------------------------------


def _agrees_with_torch(model, tol):
    x = sample("cnn", batch=4)
    ref = torch_reference("cnn", x)
    got = np.concatenate([infer(model, x[i:i + 1].transpose(0, 2, 3, 1)) for i in range(len(x))])
    assert np.abs(got - ref).max() <= tol * np.ptp(ref)


@needs_onnx2tf
def test_onnx_to_tflite_float32(tmp_path):
    onnx_model = Model.load(export_onnx("cnn", tmp_path / "cnn.onnx"))
    out, ctx = run_pass("onnx-to-tflite", onnx_model, tmp_path / "tfl", precision="float32")
    assert out.inputs[0].shape == (1, 32, 32, 3)  # NHWC, as TFLite kernels want
    assert not list((tmp_path / "tfl").glob("*.npy")) and not (tmp_path / "tfl" / "onnx2tf").exists()
    _agrees_with_torch(out, 1e-4)


@needs_onnx2tf
def test_onnx_to_tflite_makes_every_precision_in_one_calibrated_run(tmp_path):
    onnx_model = Model.load(export_onnx("cnn", tmp_path / "cnn.onnx"))
    calib = {onnx_model.inputs[0].name: sample("cnn", batch=32)}
    p = get_pass("onnx-to-tflite")
    built = {}
    for precision, tol in [("int8", 0.1), ("float16", 0.01), ("dynamic", 0.05)]:
        ctx = PassContext(tmp_path / precision, calibration=calib, cache_dir=tmp_path / "cache")
        built[precision] = out = p.run(onnx_model, p.options(precision=precision), ctx)
        assert ("reused" in ctx.notes) == (precision != "int8")  # the int8 run wrote the others too
        assert ("calibration_samples" in ctx.notes) == (precision == "int8")
        _agrees_with_torch(out, tol)
    assert built["int8"].inputs[0].dtype == "int8"
    assert weight_precision(built["float16"].path.read_bytes()) == "fp16"
    assert weight_precision(built["dynamic"].path.read_bytes()) == "dynamic-int8"
    micro, _ = run_pass("tflite-to-micro", built["int8"], tmp_path / "micro")  # and TFLite Micro from int8
    assert micro.meta["arena_bytes"] > 0


@needs_onnx2tf
@pytest.mark.slow
def test_onnx_to_tflite_keeps_an_nhwc_input_as_it_is(tmp_path):
    fp32, _ = run_pass("tflite-widen", blazeface(), tmp_path / "fp32")
    onnx_model, _ = run_pass("tflite-to-onnx", fp32, tmp_path / "onnx")  # NHWC, as tf2onnx keeps it
    back, _ = run_pass("onnx-to-tflite", onnx_model, tmp_path / "back", shapes={"input": (1, 128, 128, 3)})
    assert back.inputs[0].shape == (1, 128, 128, 3)
    x = faces(1)
    with open_session(fp32, "litert") as s:
        want = s.run({"input": x})
    with open_session(back, "litert") as s:
        got = s.run({back.inputs[0].name: x})
    for (name, w), g in zip(want.items(), got.values()):  # onnx2tf renames the outputs, in their order
        np.testing.assert_allclose(g, w, atol=1e-3, rtol=1e-4, err_msg=name)


@needs_onnx2tf
def test_hard_sigmoid_is_rewritten_into_ops_tflite_micro_has(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgepilot.passes.onnx_to_tflite import _rewrite_hard_sigmoid

    g = helper.make_graph([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.2, beta=0.5)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    want = Model.load(_save(m, tmp_path / "a.onnx"))
    assert _rewrite_hard_sigmoid(m) == 1 and "HardSigmoid" not in {n.op_type for n in m.graph.node}
    onnx.checker.check_model(m)
    got = Model.load(_save(m, tmp_path / "b.onnx"))
    x = np.linspace(-6, 6, 8, dtype=np.float32)[None]
    np.testing.assert_allclose(infer(got, x, "onnxruntime"), infer(want, x, "onnxruntime"), atol=1e-6)


def _save(m, path):
    import onnx

    onnx.save(m, str(path))
    return path


@needs_onnx2tf
def test_a_pytorch_model_reaches_tflite_through_onnx(tmp_path):
    import torch

    m = torch_model("cnn")
    program = torch.export.export(m, (torch.from_numpy(sample("cnn", batch=1)),))
    torch.export.save(program, tmp_path / "m.pt2")
    source = Model.load(tmp_path / "m.pt2")
    steps = [s for s in plan(source, ["tflite"]) if s.variant in ("onnx-fp32", "tflite-fp32")]
    assert [(s.variant, s.pass_name, s.source) for s in steps] == [
        ("onnx-fp32", "torch-to-onnx", "source"), ("tflite-fp32", "onnx-to-tflite", "onnx-fp32")]
    variants, records = run_plan(source, steps, tmp_path / "out", trust_model_code=True)
    assert [r.status for r in records] == ["ok", "ok"], [r.reason for r in records]
    x = sample("cnn", batch=1)
    got = infer(variants["tflite-fp32"], x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got, torch_reference("cnn", x), atol=1e-4)


# --- real models through optimize --------------------------------------------------------------------------------


@needs_quantizer
@pytest.mark.slow
def test_a_real_tflite_detector_reaches_every_engine(tmp_path):
    from edgepilot.evaluate.datasets import Dataset
    from edgepilot.optimize import optimize_and_report

    face = blazeface()
    report, records = optimize_and_report(face, Dataset("faces", faces(8)), tmp_path / "out",
                                          ["tflite", "micro", "onnx", "openvino", "mnn"], calibration_samples=8,
                                          seconds=0.05, max_accuracy_drop=None)
    assert report.reference == "tflite-fp16" and report.source_precision == "fp16"  # the source itself
    assert "(tflite, weights in fp16)" in (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    ok = {r.variant for r in records if r.status == "ok"}
    assert {"tflite-fp32", "tflite-dynamic", "tflite-int8-weights", "tflite-int8", "micro-int8", "onnx-fp32"} <= ok
    scored = [r for r in report.variants if r.agreement is not None and r.latency is not None and r.error is None]
    assert len(scored) >= 8 and len({r.engine for r in scored}) >= 5
    assert all(r.agreement.metric == "detection F1 at IoU 0.5" for r in scored)
    by = {r.variant: r for r in scored}
    for exact in ("tflite-fp32", "onnx-fp32", "openvino-fp32", "mnn-fp32"):  # float conversions: the same faces
        assert by[exact].agreement.value >= 0.99, exact
    assert by["tflite-int8-weights"].agreement.value >= 0.9  # int8 weights, float compute
    assert next(r for r in report.variants if r.variant == "micro-int8").arena_bytes > 0


@needs_onnx2tf
@pytest.mark.slow
def test_a_real_onnx_classifier_reaches_litert_and_an_mcu(tmp_path):
    from edgepilot.evaluate.datasets import Dataset
    from edgepilot.optimize import optimize_and_report
    from edgepilot.targets.select import Gates, select
    from test_real_models import crops

    source = Model.load(asset("ppocr-cls-v2", download=False))
    x = crops(48, 192, per_photo=3)
    report, records = optimize_and_report(source, Dataset("crops", x), tmp_path / "out", ["tflite", "micro"],
                                          calibration_samples=len(x), seconds=0.05, max_accuracy_drop=None)
    ok = {r.variant: r for r in records if r.status == "ok"}
    assert {"tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "micro-int8"} <= set(ok), \
        {r.variant: r.reason for r in records if r.status != "ok"}
    assert ok["tflite-int8"].pass_name == "onnx-to-tflite" and ok["tflite-int8"].calibration_sha256
    results = {r.variant: r for r in report.variants}
    assert results["tflite-fp32"].agreement.value >= 0.99 and results["tflite-fp32"].error is None
    micro = results["micro-int8"]
    assert micro.arena_bytes > 0 and micro.error is None
    c_array = tmp_path / "out" / "variants" / "micro-int8" / "g_model_data.cc"
    assert "alignas(16)" in c_array.read_text()
    if shutil.which("g++"):  # the deliverable compiles as a TFLM project would build it
        subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", c_array.name, "-o", "m.o"],
                       check=True, cwd=c_array.parent)
    sel = select(report, "stm32h7", Gates(max_accuracy_drop=None))
    if sel.chosen is not None:
        assert sel.chosen.engine == "tflite-micro"
    else:  # it says precisely why not
        dropped = {c.variant: c.reasons for c in sel.dropped}
        assert dropped["micro-int8"] and all(dropped.values())
