"""A real uvicorn serving a model repository on a free 127.0.0.1 port; tiny ONNX models written with onnx.helper."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from brokers import free_port

RNG = np.random.default_rng(7)
W1, B1 = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal(3).astype(np.float32)
W2 = RNG.standard_normal((4, 3)).astype(np.float32)


def linear_onnx(path: Path, w: np.ndarray = W1, b: np.ndarray = B1, batch: int | str = "batch") -> Path:
    """input [batch, 4] float32 -> output = input @ w + b, [batch, 3] (or as many columns as w has)."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def nms_onnx(path: Path, boxes: int = 6, batch: int | str = 1) -> Path:
    """A detector's tail as exporters write it, NMS inside the graph: boxes [B, N, 4] and scores [B, 1, N] ->
    selected [K, 3] (batch, class, box index of the K kept): an output whose first dimension is no batch."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "keep", "iou", "threshold"], ["selected"])],
        "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, boxes, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 1, boxes])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3])],
        [numpy_helper.from_array(np.array([boxes], np.int64), "keep"),
         numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
         numpy_helper.from_array(np.array([0.5], np.float32), "threshold")])
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def reshape_onnx(path: Path) -> Path:
    """input [3, 4] -> output [2, 6], its values reshaped: a model whose first dimension is no batch."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["output"])], "reshape",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 6])],
        [numpy_helper.from_array(np.array([2, 6], np.int64), "shape")])
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def heavy_onnx(path: Path, width: int = 1024, layers: int = 512) -> Path:
    """input [batch, width] -> output, the same: `layers` MatMuls by one shared identity weight, ~1 GFLOP a sample
    (over half a millisecond even on many cores) in a 4 MB file."""
    from onnx import TensorProto, helper, numpy_helper, save

    names = ["input", *(f"x{i}" for i in range(1, layers)), "output"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [a, "w"], [b]) for a, b in zip(names, names[1:])], "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")])
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def pair_onnx(path: Path) -> Path:
    """Two inputs of two datatypes, two outputs of two datatypes:
    a [N, 3] float32, b [N, 3] int32 -> sum = a + float(b) float32, positive = sum > 0 bool."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["a", "bf"], ["sum"]),
         helper.make_node("Greater", ["sum", "zero"], ["positive"])],
        "pair",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("b", TensorProto.INT32, ["n", 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("positive", TensorProto.BOOL, ["n", 3])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@contextmanager
def serving(models: Path, settings=None) -> Iterator:
    """Serve the repository at `models` (every model loaded first) until the block ends."""
    from edgepilot.serve.app import BackgroundServer, create_app, open_repository
    from edgepilot.serve.http import ServerSettings

    port = free_port()
    server = BackgroundServer(create_app(open_repository(models), settings or ServerSettings()), "127.0.0.1", port)
    server.url, server.port, server.app_state = f"http://127.0.0.1:{port}", port, server.app.state
    server.start()
    try:
        yield server
    finally:
        server.stop()
