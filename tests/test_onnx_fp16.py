"""The onnx-fp16 pass on tiny graphs that hold exactly what trips onnxconverter-common on real exports: a
Cast(to=FLOAT) of a shape value (YOLOv8's anchor grid) and a weight beyond fp16's range (PP-OCRv4's BatchNorm)."""
from __future__ import annotations

import numpy as np
import pytest

from edgepilot.model import Model
from edgepilot.passes import PassContext, get_pass

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")
h, T, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper


def save(nodes, inputs, outputs, path, initializers=()):
    graph = h.make_graph(nodes, "g", inputs, outputs, list(initializers))
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return Model.load(path)


def fp16(model, tmp_path, **options):
    p = get_pass("onnx-fp16")
    ctx = PassContext(tmp_path / "fp16")
    return p.run(model, p.options(**options), ctx), ctx


def run(model, x):
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_a_cast_of_a_shape_value_is_retargeted_so_onnxruntime_loads_the_result(tmp_path):
    from onnxconverter_common import float16

    nodes = [h.make_node("Shape", ["x"], ["s"], name="shape"),
             h.make_node("Gather", ["s", "one"], ["n"], axis=0, name="gather"),
             h.make_node("Cast", ["n"], ["nf"], to=T.FLOAT, name="cast"),  # as YOLOv8's head builds its grid
             h.make_node("Mul", ["x", "nf"], ["y"], name="mul")]
    model = save(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["n", 4])],
                 [h.make_tensor_value_info("y", T.FLOAT, ["n", 4])], tmp_path / "cast.onnx",
                 [nh.from_array(np.array(1, np.int64), "one")])
    # the premise: the converter alone leaves the Cast at FLOAT while typing its output float16
    plain = float16.convert_float_to_float16(onnx.load(str(model.path)), keep_io_types=True)
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(Exception, match="does not match expected type"):
        ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])

    out, ctx = fp16(model, tmp_path)
    assert ctx.notes["casts_retargeted"] == ["cast"]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = run(out, x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x * 4)


def batchnorm(tmp_path, in_constants: bool, var0: float = 9.8e7):
    """x [1, 2, 4, 4] through a BatchNorm whose channel-0 variance is 9.8e7, as in PP-OCRv4's text detector."""
    var = np.array([var0, 0.5], np.float32)
    params = {"scale": np.array([2.0, 1.0], np.float32), "bias": np.array([0.1, -0.2], np.float32),
              "mean": np.array([3.0, 0.0], np.float32), "var": var}
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             h.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn")]
    inits = [nh.from_array(np.ones((2, 2, 1, 1), np.float32), "w")]
    if in_constants:  # paddle2onnx's way: every weight is a Constant node
        nodes = [h.make_node("Constant", [], [k], value=nh.from_array(v), name=f"const_{k}")
                 for k, v in params.items()] + nodes
    else:
        inits += [nh.from_array(v, k) for k, v in params.items()]
    model = save(nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, 2, 4, 4])],
                 [h.make_tensor_value_info("y", T.FLOAT, [1, 2, 4, 4])], tmp_path / "bn.onnx", inits)
    return model, params


@pytest.mark.parametrize("in_constants", [False, True], ids=["initializers", "constants"])
def test_a_node_whose_weight_is_beyond_fp16_range_stays_fp32(tmp_path, in_constants):
    model, params = batchnorm(tmp_path, in_constants)
    x = np.random.default_rng(0).uniform(0, 2000, (1, 2, 4, 4)).astype(np.float32)
    want = run(model, x)
    c = x.sum(1, keepdims=True)  # the 1×1 conv of ones
    p = {k: v[None, :, None, None] for k, v in params.items()}
    np.testing.assert_allclose(want, (c - p["mean"]) / np.sqrt(p["var"] + 1e-5) * p["scale"] + p["bias"], rtol=1e-5)

    clamped, _ = fp16(model, tmp_path / "clamped", keep_out_of_range=False)
    assert np.abs(run(clamped, x) - want)[:, 0].max() > 1  # the variance clamped to 1e4: channel 0 ~99x too big

    out, ctx = fp16(model, tmp_path)
    kept = ctx.notes["kept_fp32_out_of_range"]
    assert kept == ["bn"]
    got = run(out, x)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)  # fp16 conv of values up to 4000
    proto = onnx.load(str(out.path))
    assert {t.name: t.data_type for t in proto.graph.initializer}.get("w") == T.FLOAT16  # the rest is fp16


def test_weights_within_range_block_nothing(tmp_path):
    model, _ = batchnorm(tmp_path, in_constants=False, var0=9.8e3)
    out, ctx = fp16(model, tmp_path)
    assert ctx.notes["kept_fp32_out_of_range"] == []
    assert {t.data_type for t in onnx.load(str(out.path)).graph.initializer} == {T.FLOAT16}
