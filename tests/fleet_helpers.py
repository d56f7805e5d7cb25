"""Fleet test helpers: a served update repository and tiny bundles (good, slower, low-confidence) for it."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from deploy_helpers import CLASSES, FEATURES, classifier
from edgepilot.deploy import build
from edgepilot.deploy.bundle import Gates
from edgepilot.fleet.repository import http_server


class Served:
    """The repository folder served over HTTP on a free loopback port, in a thread."""

    def __init__(self, root: Path) -> None:
        self.server = http_server(root)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def slow_classifier(path: Path, seed: int = 0, size: int = 384, rounds: int = 4) -> Path:
    """A classifier with the same interface that does `rounds` [size x size] matrix products per inference:
    slower by orders of magnitude, still self-consistent (its golden samples pass)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((FEATURES, size)) / np.sqrt(FEATURES)).astype(np.float32)
    w2 = (rng.standard_normal((size, CLASSES)) / np.sqrt(size)).astype(np.float32)
    shape = np.array([size, FEATURES], dtype=np.int64)
    nodes = [helper.make_node("Expand", ["input", "shape"], ["rows"]),
             helper.make_node("MatMul", ["rows", "w1"], ["h0"])]
    for i in range(rounds):
        nodes += [helper.make_node("MatMul", [f"h{i}", f"h{i}"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]
    nodes += [helper.make_node("ReduceMean", [f"h{rounds}"], ["pooled"], axes=[0], keepdims=1),
              helper.make_node("MatMul", ["pooled", "w2"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["output"])]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, FEATURES])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, CLASSES])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(shape, "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def flat_classifier(path: Path, seed: int = 0) -> Path:
    """As fast as the good one, but its outputs are nearly uniform: wrong answers, low confidence."""
    import onnx
    from onnx import numpy_helper

    classifier(path, seed)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(0.01), init.name))
    onnx.save(model, str(path))
    return path


def fleet_bundle(tmp: Path, key: Path, version: int, kind: str = "good", target: str = "rpi4") -> Path:
    """A signed bundle for `target`: a good tiny classifier, a `slow` one or a `flat` (wrong outputs) one."""
    if kind == "slow":
        model = slow_classifier(tmp / f"slow-v{version}.onnx", seed=version)
    elif kind == "flat":
        model = flat_classifier(tmp / f"flat-v{version}.onnx", seed=version)
    else:
        model = classifier(tmp / f"model-{target}-v{version}.onnx", seed=version)
    out = tmp / f"app-{target}-v{version}.edgebundle"
    build.build(model, out, key, version=version, target=target, gates=Gates(min_agreement=0.99), name="app",
                engine="onnxruntime", samples=4)
    return out
