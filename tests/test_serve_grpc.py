"""KServe v2 over gRPC: Triton's own gRPC client against `edgepilot serve`, results equal to the engine's; bad
requests answer a gRPC status and the server serves on."""
from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from brokers import free_port
from servers import B1, W1, linear_onnx, pair_onnx, serving

triton = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    linear_onnx(root / "linear" / "1" / "model.onnx")
    pair_onnx(root / "pair" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def grpc_server(models):
    from edgepilot.serve.http import ServerSettings

    port = free_port()
    with serving(models, ServerSettings(grpc_port=port, max_body_bytes=1 << 20)) as server:
        server.grpc_url = f"127.0.0.1:{port}"
        yield server


def _input(name, x, datatype):
    t = triton.InferInput(name, list(x.shape), datatype)
    t.set_data_from_numpy(x)
    return t


def test_triton_grpc_client_health_metadata_and_inference(grpc_server):
    client = triton.InferenceServerClient(grpc_server.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("linear")
    meta = client.get_server_metadata()
    assert meta.name == "edgepilot" and "binary_tensor_data" in meta.extensions
    model = client.get_model_metadata("linear")
    assert model.versions == ["1"] and model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input", "FP32", [-1, 4])]

    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    result = client.infer("linear", [_input("input", x, "FP32")], request_id="r1")
    np.testing.assert_allclose(result.as_numpy("output"), x @ W1 + B1, rtol=1e-5, atol=1e-5)
    assert result.get_response().id == "r1" and result.get_response().model_version == "1"

    a = np.array([[1.0, -2.0, 0.5]], np.float32)
    b = np.array([[1, 1, -1]], np.int32)
    out = client.infer("pair", [_input("a", a, "FP32"), _input("b", b, "INT32")],
                       outputs=[triton.InferRequestedOutput("positive")])
    np.testing.assert_array_equal(out.as_numpy("positive"), [[True, False, False]])
    assert out.as_numpy("sum") is None  # only the requested output comes back


def test_typed_contents_are_accepted_like_raw_ones(grpc_server):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = service_pb2.ModelInferRequest(model_name="linear")
    t = request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    t.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))
    np.testing.assert_allclose(got, x @ W1 + B1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, status, words", [
    ("shape", "StatusCode.INVALID_ARGUMENT", "input"),
    ("dtype", "StatusCode.INVALID_ARGUMENT", "int32"),
    ("model", "StatusCode.NOT_FOUND", "nope"),
    ("version", "StatusCode.NOT_FOUND", "7"),
    ("output", "StatusCode.INVALID_ARGUMENT", "unknown output"),
    ("nan", "StatusCode.INVALID_ARGUMENT", "NaN"),
    ("big", "StatusCode.RESOURCE_EXHAUSTED", ""),
])
def test_bad_requests_answer_a_status_and_the_server_serves_on(grpc_server, case, status, words):
    client = triton.InferenceServerClient(grpc_server.grpc_url)
    x = np.ones((1, 4), np.float32)
    kwargs = {}
    if case == "shape":
        inputs = [_input("input", np.ones((1, 5), np.float32), "FP32")]
    elif case == "dtype":
        inputs = [_input("input", np.ones((1, 4), np.int32), "INT32")]
    elif case == "nan":
        inputs = [_input("input", np.full((1, 4), np.nan, np.float32), "FP32")]
    elif case == "big":  # 2 MiB past the 1 MiB limit
        inputs = [_input("input", np.ones((1 << 17, 4), np.float32), "FP32")]
    else:
        inputs = [_input("input", x, "FP32")]
    if case == "output":
        kwargs["outputs"] = [triton.InferRequestedOutput("nope")]
    name = "nope" if case == "model" else "linear"
    version = "7" if case == "version" else ""
    with pytest.raises(InferenceServerException) as e:
        client.infer(name, inputs, model_version=version, **kwargs)
    assert e.value.status() == status and words in e.value.message()
    np.testing.assert_allclose(client.infer("linear", [_input("input", x, "FP32")]).as_numpy("output"),
                               x @ W1 + B1, rtol=1e-5, atol=1e-5)


def test_the_token_is_required_over_grpc_when_the_server_says_so(models):
    from edgepilot.serve.http import ServerSettings

    port = free_port()
    settings = ServerSettings(grpc_port=port, token="s3cret", token_for_inference=True)
    with serving(models, settings):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.ones((1, 4), np.float32)
        with pytest.raises(InferenceServerException) as e:
            client.infer("linear", [_input("input", x, "FP32")])
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        out = client.infer("linear", [_input("input", x, "FP32")], headers={"authorization": "Bearer s3cret"})
        np.testing.assert_allclose(out.as_numpy("output"), x @ W1 + B1, rtol=1e-5, atol=1e-5)
        assert client.is_server_live()  # health needs no token


def test_the_compiled_protocol_matches_its_proto(tmp_path):
    """proto/inference.desc is what protoc makes of proto/inference.proto (recompile after editing the .proto)."""
    pytest.importorskip("grpc_tools.protoc")
    import edgepilot

    root = str(Path(edgepilot.__file__).parent.parent)
    out = tmp_path / "inference.desc"
    # in a child: protoc in a process that has loaded TensorFlow's protobuf can crash
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"--descriptor_set_out={out}",
                    f"{root}/edgepilot/serve/proto/inference.proto"], check=True)
    committed = resources.files("edgepilot.serve").joinpath("proto", "inference.desc").read_bytes()
    assert out.read_bytes() == committed
