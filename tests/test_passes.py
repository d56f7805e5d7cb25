"""Each conversion pass: convert a tiny model, run it on its engine, agree with the reference."""
from __future__ import annotations

import numpy as np
import pytest

from builders import keras_model, sample, torch_model, torch_reference
from builders.onnx import export_onnx
from edgepilot.engines import open_session
from edgepilot.errors import ConfigError, InputError
from edgepilot.model import Format, Model
from edgepilot.passes import PassContext, all_passes, get_pass


def run_pass(name, model, tmp_path, calibration=None, trust=False, **options):
    p = get_pass(name)
    ctx = PassContext(tmp_path, calibration=calibration, trust_model_code=trust)
    assert p.why_not(model, ctx) == []
    out = p.run(model, p.options(**options), ctx)
    assert out.format == p.produces
    return out


def infer(model, x):
    with open_session(model, threads=1) as s:
        return s.run({s.inputs[0].name: x})[s.outputs[0].name]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "cnn.keras"
    keras_model("cnn").save(path)
    return Model.load(path)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return Model.load(export_onnx("cnn", tmp_path_factory.mktemp("onnx") / "cnn.onnx"))


CALIB = {"input": np.random.default_rng(3).standard_normal((64, 32, 32, 3)).astype(np.float32)}


# (precision, tolerance as a fraction of the output range): float16/int8 lose precision by design.
@pytest.mark.parametrize("precision,tol", [("float32", 1e-5), ("dynamic", 0.05), ("float16", 0.01), ("int8", 0.08)])
def test_keras_to_tflite(keras_file, tmp_path, precision, tol):
    out = run_pass("keras-to-tflite", keras_file, tmp_path, calibration=CALIB, precision=precision)
    x = sample("cnn", batch=8, layout="nhwc")
    ref = keras_model("cnn")(x).numpy()
    got = infer(out, x)
    assert np.abs(got - ref).max() <= tol * np.ptp(ref)
    if precision == "int8":
        assert out.inputs[0].dtype == "int8" and out.inputs[0].quantization is not None
    if precision != "float32":  # smaller weights; the graph itself stays, so not by the full ratio
        fp32 = run_pass("keras-to-tflite", keras_file, tmp_path / "fp32", precision="float32")
        assert out.size_bytes < fp32.size_bytes


def test_int8_needs_calibration(keras_file, tmp_path):
    p = get_pass("keras-to-tflite")
    with pytest.raises(InputError, match="needs calibration data"):
        p.run(keras_file, p.options(precision="int8"), PassContext(tmp_path))


def test_keras_to_onnx(keras_file, tmp_path):
    out = run_pass("keras-to-onnx", keras_file, tmp_path)
    assert out.inputs[0].shape[1:] == (32, 32, 3) and not isinstance(out.inputs[0].shape[0], int)
    x = sample("cnn", batch=3, layout="nhwc")
    np.testing.assert_allclose(infer(out, x), keras_model("cnn")(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_torch_to_onnx(tmp_path, kind):
    import torch

    m, x = torch_model("cnn"), sample("cnn", batch=1)
    if kind == "export":
        path = tmp_path / "m.pt2"
        batch = torch.export.Dim("batch")
        program = torch.export.export(m, (torch.from_numpy(sample("cnn")),), dynamic_shapes=({0: batch},))
        torch.export.save(program, path)
    else:
        path = tmp_path / "m.pt"
        torch.jit.save(torch.jit.trace(m, torch.from_numpy(x)), path)
        p = get_pass("torch-to-onnx")
        with pytest.raises(InputError, match="not recorded"):
            p.run(Model.load(path), p.options(), PassContext(tmp_path))
    shape = [1, 3, 32, 32] if kind == "torchscript" else None  # TorchScript records no shapes
    out = run_pass("torch-to-onnx", Model.load(path), tmp_path, trust=kind == "export", input_shape=shape)
    xb = sample("cnn", batch=4)
    np.testing.assert_allclose(infer(out, xb), torch_reference("cnn", xb), atol=1e-4)


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-5), ("fp16", 5e-3)])
def test_to_openvino(onnx_file, tmp_path, precision, atol):
    out = run_pass("to-openvino", onnx_file, tmp_path, precision=precision)
    x = sample("cnn")
    np.testing.assert_allclose(infer(out, x), torch_reference("cnn", x), atol=atol)


def test_keras_to_openvino(keras_file, tmp_path):
    out = run_pass("to-openvino", keras_file, tmp_path)
    x = sample("cnn", layout="nhwc")
    np.testing.assert_allclose(infer(out, x), keras_model("cnn")(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-5), ("fp16", 5e-3), ("int8-weights", 0.05)])
def test_onnx_to_mnn(onnx_file, tmp_path, precision, atol):
    out = run_pass("onnx-to-mnn", onnx_file, tmp_path, precision=precision)
    x = sample("cnn")
    np.testing.assert_allclose(infer(out, x), torch_reference("cnn", x), atol=atol)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_to_ncnn(onnx_file, tmp_path, precision):
    out = run_pass("onnx-to-ncnn", onnx_file, tmp_path, precision=precision)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"model_{precision}.bin", f"model_{precision}.param"]
    x = sample("cnn")
    np.testing.assert_allclose(infer(out, x), torch_reference("cnn", x), atol=5e-3)


def test_why_not_and_bad_options(onnx_file, tmp_path):
    p = get_pass("keras-to-tflite")
    assert p.why_not(onnx_file, PassContext(tmp_path)) == ["keras-to-tflite takes keras, savedmodel, not onnx"]
    with pytest.raises(ConfigError, match="bad options for pass keras-to-tflite"):
        p.options(precision="int4")
    with pytest.raises(ConfigError, match="unknown pass"):
        get_pass("onnx-to-coreml")


def test_every_pass_declares_itself():
    for name, cls in all_passes().items():
        assert cls.name == name and cls.consumes and isinstance(cls.produces, Format)
        assert cls.Options.model_config.get("extra") == "forbid"
