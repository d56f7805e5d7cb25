"""The accuracy gate's retries: every setting builds on Keras- and PyTorch-sourced ONNX, and detectors keep
their decoding head in float."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from builders import keras_model, sample
from builders.onnx import export_onnx
from edgepilot.engines import open_session
from edgepilot.model import Model
from edgepilot.optimize import RETRIES, _retry_options, head_nodes, sensitive_nodes
from edgepilot.passes import PassContext, get_pass

RNG = np.random.default_rng(5)
N_CALIB = 40  # 16 + 16 + 8: a ragged last batch, which the histogram calibrators used to choke on


def tiny_detector():
    """A YOLOv8-shaped detector: backbone convs, box and class convs, DFL (softmax + fixed 1x1 conv), decoding."""
    import torch

    nn = torch.nn
    torch.manual_seed(0)

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
            self.box, self.cls = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 3, 1)
            self.dfl = nn.Conv2d(4, 1, 1, bias=False).requires_grad_(False)
            self.dfl.weight.data[:] = torch.arange(4.0).view(1, 4, 1, 1)
            ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
            self.register_buffer("anchors", torch.stack((xs.flatten(), ys.flatten())) + 0.5)

        def forward(self, x):
            f = self.backbone(x)
            b = f.shape[0]
            bins = self.box(f).view(b, 4, 4, 64).transpose(2, 1).softmax(1)
            lt, rb = self.dfl(bins).view(b, 4, 64).chunk(2, 1)
            boxes = torch.cat(((self.anchors - lt + self.anchors + rb) / 2, rb + lt), 1) * 4
            return torch.cat((boxes, self.cls(f).view(b, 3, 64).sigmoid()), 1)

    return Detector().eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """ONNX models from each source: tf2onnx from Keras (NHWC), torch.onnx from PyTorch, a torch detector."""
    import torch

    root = tmp_path_factory.mktemp("sources")
    keras_model("cnn").save(root / "cnn.keras")
    p = get_pass("keras-to-onnx")
    keras_onnx = p.run(Model.load(root / "cnn.keras"), p.options(), PassContext(root / "keras"))
    det = root / "detector.onnx"
    torch.onnx.export(tiny_detector(), (torch.zeros(1, 3, 32, 32),), str(det), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "b"}, "output": {0: "b"}},
                      dynamo=False, opset_version=17)
    p = get_pass("keras-to-tflite")
    keras_tflite = p.run(Model.load(root / "cnn.keras"), p.options(), PassContext(root / "tflite"))
    return {"keras": keras_onnx, "torch": Model.load(export_onnx("cnn", root / "torch.onnx")),
            "detector": Model.load(det), "tflite": keras_tflite}


def calibration(model: Model) -> dict[str, np.ndarray]:
    shape = [d if isinstance(d, int) else N_CALIB for d in model.inputs[0].shape]
    shape[0] = N_CALIB
    return {model.inputs[0].name: RNG.standard_normal(shape).astype(np.float32)}


def run_once(model: Model, x: np.ndarray) -> np.ndarray:
    with open_session(model, threads=1) as s:
        return s.run({s.inputs[0].name: x})[s.outputs[0].name]


TRIES = [(name, k) for name, tries in RETRIES.items() for k in range(len(tries))]


@pytest.mark.parametrize("source", ["keras", "torch", "detector"])
@pytest.mark.parametrize("pass_name,k", TRIES, ids=[f"{n}-{k}" for n, k in TRIES])
def test_every_retry_setting_builds(sources, tmp_path, source, pass_name, k):
    src = sources[source]
    if src.format not in get_pass(pass_name).consumes:  # a TFLite pass: once, on the Keras model's TFLite
        if source != "keras":
            return
        src = sources["tflite"]
    extra = RETRIES[pass_name][k]
    options = _retry_options({}, extra, src)
    if options is None:  # only the detection-head setting is left out, and only for models without one
        assert extra.get("exclude_head") and source != "detector"
        return
    p = get_pass(pass_name)
    labels = RNG.integers(0, 3, N_CALIB)
    ctx = PassContext(tmp_path, calibration=calibration(src), labels=labels if "nncf" in pass_name else None)
    out = p.run(src, p.options(**options), ctx)
    x = calibration(src)[src.inputs[0].name][:2]
    got, want = run_once(out, x), run_once(src, x)
    assert got.shape == want.shape and np.isfinite(got).all()
    if "calibrate_method" in extra:
        assert ctx.notes["calibration_samples_used"] == 32  # the ragged last batch of 8 is left out


def test_head_nodes_find_the_decoding_only(sources):
    graph = onnx.load(str(sources["detector"].path)).graph
    head = set(head_nodes(sources["detector"]))
    ops = {n.name: n.op_type for n in graph.node}
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert {ops[n] for n in head} >= {"Sigmoid", "Softmax", "Conv", "Concat", "Mul"}
    assert [c for c in convs if c in head] == ["/dfl/Conv"]  # fed by the softmax; box, class, backbone are not
    assert head_nodes(sources["torch"]) == [] and head_nodes(sources["keras"]) == []  # classifiers
    assert sensitive_nodes(sources["torch"]) == ["/0/Conv", "/7/Gemm"]


def test_excluded_head_stays_float_in_int8(sources, tmp_path):
    src = sources["detector"]
    p = get_pass("onnx-quantize-static")
    out = p.run(src, p.options(**_retry_options({}, {"exclude_head": True}, src)),
                PassContext(tmp_path, calibration=calibration(src)))
    graph = onnx.load(str(out.path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    quantized = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    by_name = {n.name: n for n in graph.node}
    for name in head_nodes(src):  # the decoding computes in float: nothing it yields is quantised
        assert not set(by_name[name].output) & quantized, name
    assert producer.get(by_name["/dfl/Conv"].input[1]) is None  # its weights are the float initializer
    backbone = next(n for n in graph.node if n.op_type == "Conv")
    assert producer[backbone.input[0]] == "DequantizeLinear"  # the rest is int8
    nncf = get_pass("openvino-nncf-int8")
    ctx = PassContext(tmp_path / "ov", calibration=calibration(src))
    nncf.run(src, nncf.options(nodes_to_exclude=head_nodes(src)), ctx)
    assert ctx.notes["ignored_scope"] >= len(head_nodes(src))


def test_nodes_merged_by_preprocessing_are_still_excluded(tmp_path):
    import torch

    nn = torch.nn
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 4)).eval()
    torch.onnx.export(m, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "bn.onnx"), input_names=["input"],
                      dynamic_axes={"input": {0: "b"}}, dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    src = Model.load(tmp_path / "bn.onnx")
    assert "/1/BatchNormalization" in {n.name for n in onnx.load(str(src.path)).graph.node}
    p = get_pass("onnx-quantize-static")
    ctx = PassContext(tmp_path / "q", calibration=calibration(src))
    out = p.run(src, p.options(nodes_to_exclude=["/1/BatchNormalization"]), ctx)
    assert ctx.notes["preprocess"].startswith("skipped: its graph optimisation merges")  # Conv + BN fusion
    assert "/1/BatchNormalization" in {n.name for n in onnx.load(str(out.path)).graph.node}
    x = sample("cnn", batch=2)
    assert run_once(out, x).shape == (2, 4)
