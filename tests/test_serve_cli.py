"""`edgepilot serve --models DIR` as a device runs it: a subprocess with TensorFlow and PyTorch blocked, serving an
ONNX and a TFLite model to Triton's client until SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from brokers import free_port
from edgepilot.engines import open_session
from edgepilot.model import Model
from servers import B1, W1, linear_onnx

tritonhttp = pytest.importorskip("tritonclient.http")

DEVICE = ("import sys, importlib.abc\n"
          "class Block(importlib.abc.MetaPathFinder):\n"
          "    def find_spec(self, name, path=None, target=None):\n"
          "        if name.split('.')[0] in ('tensorflow', 'torch', 'keras', 'tf_keras'):\n"
          "            raise ImportError(f'{name} is blocked: a device has no TensorFlow or PyTorch')\n"
          "sys.meta_path.insert(0, Block())\n"
          "from edgepilot.cli import main; main()\n")


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    pytest.importorskip("keras")
    from builders import sample
    from builders.tflite import convert

    path = convert("mlp", tmp_path_factory.mktemp("tflite") / "mlp.tflite")
    return path, sample("mlp", batch=3)


def test_serve_command_on_a_device_without_tensorflow(tmp_path, tflite_model):
    tflite, x_mlp = tflite_model
    linear_onnx(tmp_path / "models" / "linear" / "1" / "model.onnx")
    (tmp_path / "models" / "mlp" / "1").mkdir(parents=True)
    (tmp_path / "models" / "mlp" / "1" / "mlp.tflite").write_bytes(tflite.read_bytes())
    (tmp_path / "models" / "mlp" / "config.yaml").write_text("engine: litert\nthreads: 1\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", DEVICE, "serve", "--models", str(tmp_path / "models"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGEPILOT_LOG": "INFO"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        client = tritonhttp.InferenceServerClient(f"127.0.0.1:{port}")
        meta = client.get_model_metadata("mlp")
        assert meta["platform"] == "litert_tflite" and meta["inputs"][0]["shape"] == [-1, 64]
        inp = tritonhttp.InferInput(meta["inputs"][0]["name"], list(x_mlp.shape), "FP32")
        inp.set_data_from_numpy(x_mlp)
        got = client.infer("mlp", [inp]).as_numpy(meta["outputs"][0]["name"])
        with open_session(Model.load(tflite), "litert") as s:
            expected = next(iter(s.run({s.inputs[0].name: x_mlp}).values()))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        x = np.eye(4, dtype=np.float32)
        inp = tritonhttp.InferInput("input", [4, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        np.testing.assert_allclose(client.infer("linear", [inp]).as_numpy("output"), W1 + B1, rtol=1e-5)
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    # uvicorn finishes the requests in flight, shuts the app down, then re-raises SIGTERM so the exit status says so
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert f"on http://127.0.0.1:{port}" in err
    assert "model linear: unloaded" in err and "model mlp: unloaded" in err
