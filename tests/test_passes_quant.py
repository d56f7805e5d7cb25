"""Simplify, fp16, int8 (ONNX Runtime, NNCF), TFLite Micro and TensorRT passes, and the weight-error analysis.

Tolerances are fractions of the reference output's range (np.ptp). int8 is bounded honestly: this
CPU has AVX2 but no VNNI, where onnxruntime's u8×s8 kernels saturate int16 sums unless weights
use 7 bits (reduce_range); measured ~0.05 of the range without it, ~0.005 with it, top-1 unchanged.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from builders import keras_model, sample, torch_reference
from builders.onnx import export_onnx
from edgepilot.engines import open_session
from edgepilot.errors import ConfigError, InputError
from edgepilot.evaluate.quant_error import fake_quantize, quant_error
from edgepilot.model import Format, Model, TensorSpec
from edgepilot.passes import PassContext, get_pass

CALIB = {"input": np.random.default_rng(3).standard_normal((64, 3, 32, 32)).astype(np.float32)}
X = sample("cnn", batch=32)


def run_pass(name, model, tmp_path, calibration=None, labels=None, **options):
    p = get_pass(name)
    ctx = PassContext(tmp_path, calibration=calibration, labels=labels)
    assert p.why_not(model, ctx) == []
    out = p.run(model, p.options(**options), ctx)
    assert out.format == p.produces
    return out, ctx


def infer(model, x, engine=None):
    with open_session(model, engine, threads=1) as s:
        return s.run({s.inputs[0].name: x})[s.outputs[0].name]


def errors(got, ref):
    """(max abs error / output range, mean abs error / output range, top-1 agreement)."""
    span = np.ptp(ref)
    d = np.abs(got - ref)
    return d.max() / span, d.mean() / span, float(np.mean(got.argmax(1) == ref.argmax(1)))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return Model.load(export_onnx("cnn", tmp_path_factory.mktemp("onnx") / "cnn.onnx"))


@pytest.fixture(scope="module")
def ref():
    return torch_reference("cnn", X)


# --- ONNX → ONNX ----------------------------------------------------------------------------------

def test_onnx_simplify_folds_constants(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b1, b2 = (rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (3,), (3,)))
    nodes = [helper.make_node("Identity", ["x"], ["x1"]), helper.make_node("Add", ["b1", "b2"], ["b"]),
             helper.make_node("MatMul", ["x1", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y1"]),
             helper.make_node("Relu", ["y1"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b1, "b1"), (b2, "b2"))])
    path = tmp_path / "redundant.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    out, ctx = run_pass("onnx-simplify", Model.load(path), tmp_path / "out")
    assert ctx.notes["nodes"] == {"before": 5, "after": 3}  # Identity gone, b1 + b2 folded into one constant
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(infer(out, x), np.maximum(x @ w + b1 + b2, 0), atol=1e-6)
    assert not isinstance(out.inputs[0].shape[0], int)  # the dynamic batch survives


def test_onnx_simplify_keeps_the_cnn_exact(cnn, tmp_path, ref):
    out, _ = run_pass("onnx-simplify", cnn, tmp_path)
    np.testing.assert_allclose(infer(out, X), ref, atol=1e-5)


def test_onnx_fp16_keeps_float32_io(cnn, tmp_path, ref):
    import onnx

    out, _ = run_pass("onnx-fp16", cnn, tmp_path)
    assert out.inputs[0].dtype == out.outputs[0].dtype == "float32"
    weights = onnx.load(str(out.path)).graph.initializer
    assert {t.data_type for t in weights if len(t.dims) > 1} == {onnx.TensorProto.FLOAT16}
    got = infer(out, X)
    assert got.dtype == np.float32
    max_rel, _, top1 = errors(got, ref)
    assert max_rel < 0.01 and top1 == 1.0  # measured 2e-4 of the range
    assert out.size_bytes < 0.75 * cnn.size_bytes


# --- ONNX Runtime int8 ----------------------------------------------------------------------------

@pytest.mark.parametrize("options,tol", [
    ({}, 0.08),  # u8×s8 saturation on AVX2 without VNNI: measured 0.049
    ({"reduce_range": True}, 0.015),  # 7-bit weights: measured 0.005
    ({"reduce_range": True, "per_channel": True}, 0.015),  # measured 0.004
    ({"weight_type": "uint8"}, 0.015),  # u8×u8 kernels do not saturate: measured 0.002
])
def test_onnx_quantize_dynamic(cnn, tmp_path, ref, options, tol):
    import onnx

    out, _ = run_pass("onnx-quantize-dynamic", cnn, tmp_path, **options)
    ops = {n.op_type for n in onnx.load(str(out.path)).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
    max_rel, _, top1 = errors(infer(out, X), ref)
    assert max_rel < tol and top1 >= 0.95


@pytest.mark.parametrize("options,tol", [
    ({}, 0.08),  # measured 0.048 (saturation, as above); 0.005 when the QDQ graph runs unfused in float
    ({"calibrate_method": "entropy", "histogram_bins": 256, "reduce_range": True}, 0.02),
    ({"calibrate_method": "percentile", "per_channel": True, "reduce_range": True}, 0.02),
    ({"activation_type": "uint8", "reduce_range": True}, 0.02),
])
def test_onnx_quantize_static(cnn, tmp_path, ref, options, tol):
    out, ctx = run_pass("onnx-quantize-static", cnn, tmp_path, calibration=CALIB, **options)
    scales = _activation_scales(out)
    assert "input" in scales and ctx.notes["calibration_samples"] == 64
    max_rel, mean_rel, top1 = errors(infer(out, X), ref)
    assert max_rel < tol and mean_rel < tol / 3 and top1 >= 0.95


def _activation_scales(model):
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(model.path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in g.node if n.op_type == "QuantizeLinear"}


def test_calibration_methods_choose_different_ranges(cnn, tmp_path):
    """Percentile and entropy clip outliers: their ranges are narrower than MinMax's somewhere, never wider."""
    scales = {m: _activation_scales(run_pass("onnx-quantize-static", cnn, tmp_path / m, calibration=CALIB,
                                             calibrate_method=m, histogram_bins=256)[0])
              for m in ("minmax", "percentile", "entropy")}
    for m in ("percentile", "entropy"):
        assert all(scales[m][k] <= scales["minmax"][k] * (1 + 1e-6) for k in scales["minmax"])
        assert any(scales[m][k] < 0.99 * scales["minmax"][k] for k in scales["minmax"]), m


def test_static_excludes_nodes_and_rejects_unknown_ones(cnn, tmp_path):
    import onnx

    out, _ = run_pass("onnx-quantize-static", cnn, tmp_path, calibration=CALIB, nodes_to_exclude=["/3/Conv"])
    convs = {n.name: n.input[1] for n in onnx.load(str(out.path)).graph.node if n.op_type == "Conv"}
    assert convs["/3/Conv"] == "3.weight"  # float weights, fed directly
    assert convs["/0/Conv"].endswith("DequantizeLinear_Output")
    p = get_pass("onnx-quantize-static")
    with pytest.raises(ConfigError, match="'/9/Conv', which is not in the model"):
        p.run(cnn, p.options(nodes_to_exclude=["/9/Conv"]), PassContext(tmp_path / "bad", calibration=CALIB))
    assert "already quantised" in " ".join(p.why_not(out, PassContext(tmp_path)))


@pytest.mark.parametrize("calibration,message", [
    (None, "calibration data missing"),
    ({"input": np.zeros((0, 3, 32, 32), np.float32)}, "the calibration set is empty"),
    ({"input": np.zeros((8, 32, 32, 3), np.float32)},
     r"calibration shape \(32, 32, 3\) does not fit input 'input' \(3, 32, 32\)"),
    ({"other": np.zeros((8, 3, 32, 32), np.float32), "more": np.zeros((8, 3), np.float32)},
     "calibration data missing for input 'input'"),
])
@pytest.mark.parametrize("name", ["onnx-quantize-static", "openvino-nncf-int8", "mnn-quantize-int8"])
def test_bad_calibration_data(cnn, tmp_path, name, calibration, message):
    p = get_pass(name)
    with pytest.raises(InputError, match=message):
        p.run(cnn, p.options(), PassContext(tmp_path, calibration=calibration))


# --- OpenVINO NNCF --------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["onnx", "ir"])
def test_openvino_nncf_int8(cnn, tmp_path, ref, source):
    model = cnn if source == "onnx" else run_pass("to-openvino", cnn, tmp_path / "ir")[0]
    out, ctx = run_pass("openvino-nncf-int8", model, tmp_path / "int8", calibration=CALIB)
    assert [f.suffix for f in out.files] == [".xml", ".bin"] and ctx.notes["accuracy_control"] is False
    max_rel, mean_rel, top1 = errors(infer(out, X), ref)
    assert max_rel < 0.12 and mean_rel < 0.03 and top1 >= 0.9  # measured 0.065, 0.010, 1.0


def test_openvino_nncf_accuracy_control(cnn, tmp_path):
    labels = torch_reference("cnn", CALIB["input"]).argmax(1)  # the float model is right on every sample
    out, ctx = run_pass("openvino-nncf-int8", cnn, tmp_path, calibration=CALIB, labels=labels, max_drop=0.02)
    acc = ctx.notes["top1_on_calibration"]
    assert ctx.notes["accuracy_control"] is True and acc["float"] == 1.0 and acc["int8"] >= 0.98
    assert out.format == Format.OPENVINO
    p = get_pass("openvino-nncf-int8")
    with pytest.raises(InputError, match="accuracy control needs labels"):
        p.run(cnn, p.options(accuracy_control=True), PassContext(tmp_path / "x", calibration=CALIB))


# --- TFLite Micro ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tflite_int8(tmp_path_factory):
    from builders.tflite import convert

    return Model.load(convert("cnn", tmp_path_factory.mktemp("tflite") / "cnn_int8.tflite", int8=True))


@pytest.fixture(scope="module")
def micro(tflite_int8, tmp_path_factory):
    return run_pass("tflite-to-micro", tflite_int8, tmp_path_factory.mktemp("micro"))[0]


def test_tflite_to_micro_deliverable(micro, tflite_int8):
    from edgepilot.engines.micro import measure_arena
    from edgepilot.formats.tflite import read

    data = tflite_int8.path.read_bytes()
    assert micro.format == Format.TFLITE and micro.path.read_bytes() == data
    assert micro.meta["ops"] == sorted(set(read(data).ops)) == ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN"]
    assert micro.meta["arena_bytes"] == measure_arena(micro.path) and micro.meta["arena_bytes"] % 16 == 0
    assert micro.meta["model_bytes"] == len(data)
    header = (micro.path.parent / "g_model_data.h").read_text()
    assert f"#define G_MODEL_ARENA_SIZE {micro.meta['arena_bytes']}" in header
    resolver = (micro.path.parent / "g_model_ops.h").read_text()
    for method in ("AddConv2D", "AddFullyConnected", "AddMaxPool2D", "AddMean"):
        assert f"resolver.{method}()" in resolver
    assert "MicroMutableOpResolver<kGModelOpCount>" in resolver and "kGModelOpCount = 4;" in resolver
    assert {f.name for f in micro.files} == {"model.tflite", "g_model_data.cc", "g_model_data.h", "g_model_ops.h"}


def test_tflite_to_micro_runs_in_tflm(micro):
    x = sample("cnn", batch=4, layout="nhwc")
    ref = keras_model("cnn")(x).numpy()
    max_rel, _, top1 = errors(infer(micro, x, engine="tflite-micro"), ref)
    assert max_rel < 0.08 and top1 >= 0.75  # int8 end to end


_MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include "m_data.h"
int main(int argc, char** argv) {
  if ((uintptr_t)m % 16 != 0 || m_len != M_LEN || M_ARENA_SIZE < M_ARENA_BYTES_MEASURED) return 2;
  FILE* f = fopen(argv[1], "wb");
  if (!f || fwrite(m, 1, m_len, f) != m_len) return 3;
  return fclose(f);
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="needs gcc and g++")
@pytest.mark.parametrize("language", ["c", "c++"])
def test_micro_c_array_compiles_and_holds_the_model(tflite_int8, tmp_path, language):
    out, _ = run_pass("tflite-to-micro", tflite_int8, tmp_path, array_name="m", language=language,
                      arena_margin=0.25)
    assert out.meta["arena_size"] >= 1.25 * out.meta["arena_bytes"] and out.meta["arena_size"] % 16 == 0
    src = tmp_path / ("m_data.c" if language == "c" else "m_data.cc")
    compiler = ["gcc", "-std=c11"] if language == "c" else ["g++", "-std=c++17"]
    (tmp_path / "main.c").write_text(_MAIN)
    subprocess.run([*compiler, "-Wall", "-Wextra", "-Werror", "-c", str(src), "-o", str(tmp_path / "m.o")],
                   check=True, cwd=tmp_path)
    subprocess.run(["gcc", "-std=c11", "-c", "main.c", "-o", "main.o"], check=True, cwd=tmp_path)
    subprocess.run(["g++" if language == "c++" else "gcc", "main.o", "m.o", "-o", "check"], check=True, cwd=tmp_path)
    subprocess.run(["./check", "dump.bin"], check=True, cwd=tmp_path)
    assert (tmp_path / "dump.bin").read_bytes() == tflite_int8.path.read_bytes()


def test_micro_refuses_float_models_and_maps_op_names(tmp_path):
    from edgepilot.passes.tflite_to_micro import resolver_method

    float_model = Model(tmp_path / "f.tflite", Format.TFLITE, [TensorSpec("x", "float32", (1, 4))],
                        [TensorSpec("y", "float32", (1, 2))], meta={"ops": ["FULLY_CONNECTED"]})
    assert "full-int8" in " ".join(get_pass("tflite-to-micro").why_not(float_model, PassContext(tmp_path)))
    assert [resolver_method(op) for op in ("DEPTHWISE_CONV_2D", "ADD_N", "PADV2", "L2_NORMALIZATION",
                                           "UNIDIRECTIONAL_SEQUENCE_LSTM", "BATCH_MATMUL", "RESIZE_NEAREST_NEIGHBOR",
                                           "TFLite_Detection_PostProcess")] == [
        "AddDepthwiseConv2D", "AddAddN", "AddPadV2", "AddL2Normalization", "AddUnidirectionalSequenceLSTM",
        "AddBatchMatMul", "AddResizeNearestNeighbor", "AddDetectionPostprocess"]


# --- TensorRT (no GPU here: only its reasons) -----------------------------------------------------

def test_tensorrt_says_why_not(cnn, tmp_path):
    from edgepilot.engines.tensorrt import TensorRTEngine

    if TensorRTEngine.available()[0]:
        pytest.skip("TensorRT and a GPU are present")
    reasons = get_pass("onnx-to-tensorrt").why_not(cnn, PassContext(tmp_path))
    assert reasons and all("TensorRT is not installed" in r or "no CUDA GPU" in r for r in reasons)
    with pytest.raises(ConfigError, match="min_batch <= opt_batch <= max_batch"):
        get_pass("onnx-to-tensorrt").options(min_batch=4, opt_batch=2)


# --- §3.1: weight quantisation error by bit depth --------------------------------------------------

def test_fake_quantize_is_symmetric_uniform():
    w = np.array([[1.0, -0.45, 0.3], [0.02, -0.013, 0.0]], np.float32)
    np.testing.assert_allclose(fake_quantize(w, 4), np.round(w * 7) / 7, atol=1e-7)  # scale = max|w| / 7
    per_channel = fake_quantize(w, 4, per_channel=True, axis=0)
    np.testing.assert_allclose(per_channel[1], np.round(w[1] / 0.02 * 7) * 0.02 / 7, atol=1e-7)
    assert np.array_equal(fake_quantize(w, 32), w)
    assert np.array_equal(fake_quantize(np.zeros((2, 3)), 8), np.zeros((2, 3)))


def test_quant_error_by_bit_depth_onnx(cnn):
    report = quant_error(cnn)
    rows = {(r["bits"], r["scheme"]): r for r in report.overall}
    assert rows[(32, "per-tensor")]["mse"] == 0 and rows[(32, "per-tensor")]["sqnr_db"] is None
    for scheme in ("per-tensor", "per-channel"):
        mse = [rows[(b, scheme)]["mse"] for b in (16, 8, 4)]
        assert mse[0] < mse[1] < mse[2]
        # each bit is worth ~6 dB of SQNR
        assert 40 < rows[(16, scheme)]["sqnr_db"] - rows[(8, scheme)]["sqnr_db"] < 56
    assert rows[(8, "per-channel")]["sqnr_db"] >= rows[(8, "per-tensor")]["sqnr_db"]
    assert rows[(4, "per-tensor")]["compression"] == 8.0
    names = {t.name for t in report.tensors}
    assert names == {"0.weight", "3.weight", "7.weight"}  # biases are 1-D: not analysed
    worst = report.worst(bits=4)
    assert [t.sqnr_db for t in worst] == sorted(t.sqnr_db for t in worst)
    assert report.to_dict()["tensors"][0]["shape"] == [8, 3, 3, 3]


def test_quant_error_reads_keras_weights(tmp_path):
    path = tmp_path / "cnn.keras"
    keras_model("cnn").save(path)
    report = quant_error(Model.load(path), bits=(8,), schemes=("per-channel",))
    assert len(report.tensors) == 3 and all(t.sqnr_db > 30 for t in report.tensors)
    assert report.tensors[0].shape == (3, 3, 3, 8)  # Keras kernels: output channels last


# --- MNN full int8 --------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["onnx", "mnn"])
def test_mnn_quantize_int8(cnn, tmp_path, ref, source):
    model = cnn if source == "onnx" else run_pass("onnx-to-mnn", cnn, tmp_path / "fp32")[0]
    out, ctx = run_pass("mnn-quantize-int8", model, tmp_path / "int8", calibration=CALIB)
    assert out.meta["weight_storage"] == ["int8"] and ctx.notes["calibration_samples"] == 64
    max_rel, mean_rel, top1 = errors(infer(out, X), ref)
    assert max_rel < 0.05 and mean_rel < 0.015 and top1 >= 0.95  # measured 0.013, 0.004, 1.0 (KL)


# --- the TensorRT builder's logic on a fake tensorrt + cuda-python (TensorRT 10 signatures) --------

class _FakeCudart:
    """cuda-python's runtime API over host memory: enough for the int8 calibrator."""

    def __init__(self):
        import ctypes
        import enum

        self.ctypes, self.memory = ctypes, {}
        self.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0})
        self.cudaMemcpyKind = type("K", (), {"cudaMemcpyHostToDevice": 1})

    def cudaMalloc(self, n):
        buf = self.ctypes.create_string_buffer(n)
        self.memory[self.ctypes.addressof(buf)] = buf
        return self.cudaError_t.cudaSuccess, self.ctypes.addressof(buf)

    def cudaMemcpy(self, dst, src, n, kind):
        self.ctypes.memmove(dst, src, n)
        return (self.cudaError_t.cudaSuccess,)

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (self.cudaError_t.cudaSuccess,)


def _fake_tensorrt(cuda):
    import enum
    import importlib.machinery
    import types

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.99-fake"
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 TF32")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("F", {"STRONGLY_TYPED": 5})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")

    class ILogger:
        Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3})

        def __init__(self): pass

    class Calibrator:
        def __init__(self): pass

    trt.ILogger = ILogger
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (Calibrator,), {})
    trt.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (Calibrator,), {})
    tensor = types.SimpleNamespace(name="input", shape=(-1, 3, 32, 32))
    network = types.SimpleNamespace(num_inputs=1, get_input=lambda i: tensor)

    class Profile(dict):
        def set_shape(self, name, lo, opt, hi): self[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.profiles = {trt.BuilderFlag.TF32}, []  # TensorRT enables TF32 by default
            self.int8_calibrator = self.calibration = None

        def set_memory_pool_limit(self, pool, n): self.workspace = n
        def set_flag(self, f): self.flags.add(f)
        def clear_flag(self, f): self.flags.discard(f)
        def add_optimization_profile(self, p): self.profiles.append(p)
        def set_calibration_profile(self, p): self.calibration = p

    class Builder:
        def __init__(self, logger): self.logger = logger
        def create_network(self, flags):
            trt.created_with = flags
            return network

        def create_builder_config(self):
            trt.config = Config()
            return trt.config

        def create_optimization_profile(self): return Profile()

        def build_serialized_network(self, net, config):
            calibrator, trt.batches = config.int8_calibrator, []
            while calibrator is not None:
                ptrs = calibrator.get_batch(["input"])
                if ptrs is None:
                    break
                n = calibrator.get_batch_size() * 3 * 32 * 32
                raw = cuda.ctypes.string_at(ptrs[0], n * 4)
                trt.batches.append(np.frombuffer(raw, np.float32).reshape(-1, 3, 32, 32))
            return b"FAKEPLAN"

    class OnnxParser:
        num_errors = 0
        def __init__(self, net, logger): pass
        def parse_from_file(self, path):
            trt.parsed = path
            return True

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    import sys
    import types

    cuda = _FakeCudart()
    trt = _fake_tensorrt(cuda)
    for name, mod in {"tensorrt": trt, "cuda": types.ModuleType("cuda"),
                      "cuda.bindings": types.ModuleType("cuda.bindings"), "cuda.bindings.runtime": cuda}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return trt, cuda


def test_tensorrt_builder_settings(fake_trt, cnn, tmp_path):
    from edgepilot.passes.onnx_to_tensorrt import Options, build_plan

    trt, cuda = fake_trt
    build_plan(cnn.path, tmp_path / "fp16.engine", Options(precision="fp16", opt_batch=2, max_batch=16))
    assert trt.created_with == 0 and trt.config.flags == {trt.BuilderFlag.FP16}  # TF32 off unless asked
    assert trt.config.profiles == [{"input": ((1, 3, 32, 32), (2, 3, 32, 32), (16, 3, 32, 32))}]
    assert (tmp_path / "fp16.engine").read_bytes() == b"FAKEPLAN"

    calibration = {"input": CALIB["input"][:20]}
    build_plan(cnn.path, tmp_path / "int8.engine", Options(precision="int8", calibration_batch=8),
               calibration=calibration)
    assert trt.config.flags == {trt.BuilderFlag.INT8}
    assert trt.config.calibration == {"input": ((8, 3, 32, 32),) * 3}
    assert isinstance(trt.config.int8_calibrator, trt.IInt8EntropyCalibrator2)
    assert len(trt.batches) == 2  # whole batches only: 20 samples give two of 8
    np.testing.assert_array_equal(np.concatenate(trt.batches), calibration["input"][:16])
    assert cuda.memory == {}  # the calibrator freed its device buffers

    qdq, _ = run_pass("onnx-quantize-static", cnn, tmp_path / "qdq", calibration=CALIB, activation_symmetric=True)
    build_plan(qdq.path, tmp_path / "qdq.engine", Options(precision="int8"))
    assert trt.created_with == 1 << 5 and trt.config.flags == set()  # strongly typed: the QDQ nodes decide
    with pytest.raises(InputError, match="calibration data missing"):
        build_plan(cnn.path, tmp_path / "x.engine", Options(precision="int8"))


def test_a_failed_symbolic_shape_inference_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime saves a half-inferred model into the cwd when it gives up; the pass removes it and goes on
    without symbolic shapes."""
    from onnxruntime.quantization import shape_inference

    from edgepilot.passes import onnx_quantize

    calls = []
    real = shape_inference.quant_pre_process

    def flaky(src, dst, skip_symbolic_shape=False, **kw):
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            (tmp_path / "sym_shape_infer_temp.onnx").write_bytes(b"x")
            (tmp_path / "0123-abcd.data").write_bytes(b"x")
            raise Exception("Incomplete symbolic shape inference")
        return real(src, dst, skip_symbolic_shape=True, **kw)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shape_inference, "quant_pre_process", flaky)
    src = export_onnx("cnn", tmp_path / "cnn.onnx")
    (tmp_path / "work").mkdir()
    ctx = PassContext(tmp_path / "work")
    out = onnx_quantize._preprocess(src, tmp_path / "work", ctx)
    assert calls == [False, True] and out.name == "preprocessed.onnx"
    assert ctx.notes["preprocess"] == "quant_pre_process (without symbolic shapes)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "work"]
