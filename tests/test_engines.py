"""Every registered engine against the same tiny models, plus the feed checks all sessions share."""
from __future__ import annotations

import numpy as np
import pytest

from builders import BUILDERS, KINDS, sample
from edgepilot.engines import all_engines, engine_for, open_session
from edgepilot.errors import InputError, UnavailableError
from edgepilot.model import Format, Model

CASES = [(name, fmt, kind) for name, engine in all_engines().items()
         for fmt in sorted(engine.formats, key=str) if fmt in BUILDERS for kind in KINDS]


def test_every_engine_is_covered():
    covered = {name for name, _, _ in CASES}
    assert covered == set(all_engines()), "an engine whose formats no builder makes is not tested"
    assert len(all_engines()) == 7


@pytest.mark.parametrize("name,fmt,kind", CASES, ids=[f"{n}-{f.value}-{k}" for n, f, k in CASES])
def test_conformance(built, name, fmt, kind):
    """Export → load → run at batch 2 → agree with the framework's own output."""
    engine = all_engines()[name]
    ok, why = engine.available()
    if not ok:
        pytest.skip(f"{name} unavailable here: {why}")
    b = built(fmt, kind)
    model = Model.load(b.path)
    with engine().open(model, threads=1) as session:
        assert [s.name for s in session.inputs] == [s.name for s in model.inputs]
        out = session.run({spec.name: x for spec, x in zip(session.inputs, b.inputs)})
        assert list(out) == [s.name for s in session.outputs]
    for spec, expected in zip(session.outputs, b.expected):
        got = out[spec.name]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=b.atol, rtol=b.rtol)


@pytest.fixture(params=[(Format.ONNX, "onnxruntime"), (Format.TFLITE, "litert"), (Format.OPENVINO, "openvino")],
                ids=lambda p: p[1])
def cnn_session(request, built):
    fmt, engine = request.param
    model = Model.load(built(fmt, "cnn").path)
    with open_session(model, engine) as s:
        yield s


def _good(session):
    spec = session.inputs[0]
    layout = "nhwc" if spec.shape[-1] == 3 else "nchw"
    return spec.name, sample("cnn", batch=1, layout=layout)


def test_wrong_shape(cnn_session):
    name, x = _good(cnn_session)
    with pytest.raises(InputError, match=rf"input '{name}' expects dimension 2 32"):
        cnn_session.run({name: x[:, :, :16]})
    with pytest.raises(InputError, match="expects rank 4"):
        cnn_session.run({name: x[0]})


def test_wrong_dtype(cnn_session):
    name, x = _good(cnn_session)
    with pytest.raises(InputError, match=rf"input '{name}' expects float32, got float64") as e:
        cnn_session.run({name: x.astype(np.float64)})
    assert "astype" in e.value.hint


def test_missing_and_unknown_input(cnn_session):
    name, x = _good(cnn_session)
    with pytest.raises(InputError, match=f"missing input '{name}'"):
        cnn_session.run({})
    with pytest.raises(InputError, match="unknown input 'images'"):
        cnn_session.run({"images": x})


def test_batch_size_changes_between_calls(cnn_session):
    name, x = _good(cnn_session)
    one = cnn_session.run({name: x})
    four = cnn_session.run({name: np.repeat(x, 4, axis=0)})
    out = cnn_session.outputs[0].name
    assert four[out].shape[0] == 4
    np.testing.assert_allclose(four[out], np.repeat(one[out], 4, axis=0), atol=1e-5)


def test_fixed_batch_is_enforced(tmp_path):
    from builders.onnx import export_onnx

    model = Model.load(export_onnx("mlp", tmp_path / "fixed.onnx", dynamic_batch=False))
    assert model.inputs[0].shape == (1, 64)
    with open_session(model, "onnxruntime") as s:
        with pytest.raises(InputError, match="expects batch size 1") as e:
            s.run({"input": sample("mlp", batch=3)})
    assert "dynamic" in e.value.hint


def test_quantised_io_uses_scale_and_zero_point(tmp_path):
    from builders import keras_model
    from builders.tflite import convert

    model = Model.load(convert("mlp", tmp_path / "q.tflite", int8=True))
    x = sample("mlp", batch=8)
    reference = keras_model("mlp")(x).numpy()
    with open_session(model, "litert") as s:
        spec, out = s.inputs[0], s.outputs[0]
        deq = s.run({spec.name: x})[out.name]  # float in: quantised with the input's scale/zero point
        raw = s.run({spec.name: x}, dequantize_outputs=False)[out.name]
    assert deq.dtype == np.float32 and raw.dtype == np.int8
    q = out.quantization
    np.testing.assert_allclose(deq, (raw.astype(np.float32) - q.zero_point[0]) * q.scale[0], rtol=1e-6)
    # int8 error stays within a few quantisation steps of the output
    assert np.abs(deq - reference).max() < 8 * q.scale[0] + 0.05 * np.abs(reference).max()
    assert (deq.argmax(1) == reference.argmax(1)).mean() >= 0.75


def test_engine_for_errors(built):
    model = Model.load(built(Format.TFLITE, "mlp").path)
    with pytest.raises(UnavailableError, match="engine 'onnxruntime' does not run tflite models"):
        engine_for(model, "onnxruntime")
    with pytest.raises(UnavailableError, match="unknown engine 'tvm'"):
        engine_for(model, "tvm")
    assert engine_for(model).name == "litert"


def test_available_never_raises():
    for engine in all_engines().values():
        ok, why = engine.available()
        assert isinstance(ok, bool) and why


@pytest.mark.parametrize("kind", KINDS)
def test_openvino_fp32_agrees_with_onnxruntime_on_every_cpu(built, kind):
    """OpenVINO would compute an fp32 model in bf16 on CPUs with AVX512_BF16/AMX unless told: edgepilot tells it."""
    model = Model.load(built(Format.ONNX, kind).path)
    x = sample(kind, batch=4)
    with open_session(model, "onnxruntime", threads=1) as ort, open_session(model, "openvino", threads=1) as ov:
        assert ov.precision == "fp32" and ov.threads == 1
        name = model.inputs[0].name
        np.testing.assert_allclose(ov.run({name: x})[model.outputs[0].name],
                                   ort.run({name: x})[model.outputs[0].name], atol=1e-4, rtol=1e-4)


def test_threads_none_means_every_usable_core_on_every_engine(built):
    from edgepilot.engines.base import default_threads

    for fmt, engines in ((Format.ONNX, ("onnxruntime", "openvino")), (Format.TFLITE, ("litert",))):
        model = Model.load(built(fmt, "mlp").path)
        for engine in engines:
            with open_session(model, engine) as s:
                assert s.threads == default_threads(), engine


def test_engine_options_are_typed(built):
    from edgepilot.errors import ConfigError

    model = Model.load(built(Format.ONNX, "mlp").path)
    with pytest.raises(ConfigError, match="precision"):
        open_session(model, "openvino", precision="int3")
    with pytest.raises(ConfigError, match="arena"):
        all_engines()["onnxruntime"]().open(model, arena=4)
