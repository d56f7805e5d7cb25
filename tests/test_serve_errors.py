"""Bad requests get a JSON {"error": ...} with a 4xx/5xx status, and the server serves on after each one."""
from __future__ import annotations

import json
import socket
import time

import httpx
import numpy as np
import pytest

from edgepilot.engines.fake import FakeEngine, registered
from edgepilot.serve.http import ServerSettings
from servers import B1, W1, linear_onnx, serving

TOKEN = "s3cret"
GOOD = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def _fail_on_negative(feeds):
    x = next(iter(feeds.values()))
    if (x < 0).any():
        raise RuntimeError("this model refuses negative numbers")
    if (x > 1000).any():
        time.sleep(1.5)  # slow on purpose: longer than the request timeout
    return {"output": np.zeros((len(x), 3), np.float32)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    linear_onnx(root / "linear" / "1" / "model.onnx")
    (root / "linear" / "config.yaml").write_text("max_delay_ms: 0\n")
    linear_onnx(root / "scripted" / "1" / "model.onnx")
    (root / "scripted" / "config.yaml").write_text("engine: fake-serve\nwarmup: 0\nmax_batch: 1\n")
    settings = ServerSettings(max_body_bytes=64 << 10, request_timeout_s=0.5, body_timeout_s=1.0, token=TOKEN)
    with registered(FakeEngine.scripted(_fail_on_negative, name="fake-serve")), serving(root, settings) as s:
        yield s


def post(server, path, body=None, content=None, headers=None):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=10)


def still_serving(server):
    r = post(server, "/v2/models/linear/infer", GOOD)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], np.array([1, 2, 3, 4], np.float32) @ W1 + B1,
                               rtol=1e-5)


def assert_error(r, status, words):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]
    assert words.lower() in message.lower(), message


def tensor(**changes):
    t = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    t.update(changes)
    return {"inputs": [t]}


@pytest.mark.parametrize("body,status,words", [
    (tensor(shape=[1, 5], data=[1, 2, 3, 4, 5]), 400, "dimension 1"),
    (tensor(shape=[4]), 400, "rank"),
    (tensor(shape=[2, 4]), 400, "holds 8 values"),
    (tensor(datatype="INT64"), 400, "expects float32"),
    (tensor(datatype="STRING"), 400, "unsupported datatype"),
    (tensor(data=[1, "x", 3, 4]), 400, "not a list of FP32"),
    (tensor(data=[[1, 2], [3]]), 400, "not a list of FP32"),
    (tensor(name="nope"), 400, "unknown input"),
    ({"inputs": []}, 400, "non-empty 'inputs'"),
    ({"inputs": [GOOD["inputs"][0], GOOD["inputs"][0]]}, 400, "given twice"),
    ({**GOOD, "outputs": [{"name": "nope"}]}, 400, "unknown output"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_tensors(server, body, status, words):
    assert_error(post(server, "/v2/models/linear/infer", body), status, words)
    still_serving(server)


@pytest.mark.parametrize("content", [b"{not json", b'{"inputs": [{"name": "input", "data": [NaN]}]}', b"[" * 60000,
                                     b"\xff\xfe"])
def test_malformed_json(server, content):
    assert_error(post(server, "/v2/models/linear/infer", content=content), 400, "malformed JSON")
    still_serving(server)


def test_tf_serving_bad_requests(server):
    assert_error(post(server, "/v1/models/linear:predict", {"instances": [[1, 2, 3]]}), 400, "dimension 1")
    assert_error(post(server, "/v1/models/linear:predict", {"instances": [], "inputs": []}), 400, "either")
    assert_error(post(server, "/v1/models/linear:predict", {"instances": [["a", "b", "c", "d"]]}), 400, "numbers")
    assert_error(post(server, "/v1/models/linear:explain", {"instances": [[1, 2, 3, 4]]}), 404, "predict")
    assert_error(post(server, "/v1/models/linear:classify", {"instances": [[1, 2, 3, 4]]}), 400, "examples")
    assert_error(post(server, "/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]}), 404, "unknown model")
    still_serving(server)


def binary_request(x: np.ndarray, size: int | None = None, header_length: str | None = None, extra: bytes = b""):
    raw = x.tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw) if size is None else size}}]})
    return header.encode() + raw + extra, {"Inference-Header-Content-Length": header_length or str(len(header))}


@pytest.mark.parametrize("kind,words", [
    ("length not a number", "not a length"), ("length past the body", "not a length"),
    ("size past the data", "goes past"), ("bytes left over", "no input's binary_data_size covers"),
    ("size not whole values", "whole number"),
])
def test_malformed_binary_requests(server, kind, words):
    x = np.ones((1, 4), np.float32)
    content, headers = {
        "length not a number": lambda: binary_request(x, header_length="12x"),
        "length past the body": lambda: binary_request(x, header_length="99999"),
        "size past the data": lambda: binary_request(x, size=17),
        "bytes left over": lambda: binary_request(x, extra=b"\0" * 4),
        "size not whole values": lambda: binary_request(x, size=15, extra=b""),
    }[kind]()
    assert_error(post(server, "/v2/models/linear/infer", content=content, headers=headers), 400, words)
    still_serving(server)


def test_nan_and_inf_are_refused(server):
    for bad in (np.nan, np.inf):
        x = np.array([[1, bad, 3, 4]], np.float32)
        content, headers = binary_request(x)
        assert_error(post(server, "/v2/models/linear/infer", content=content, headers=headers), 400, "NaN or Inf")
    assert_error(post(server, "/v1/models/linear:predict", content=b'{"instances": [[1, 2, NaN, 4]]}'), 400,
                 "malformed JSON")
    still_serving(server)


def test_unknown_model_or_version(server):
    assert_error(post(server, "/v2/models/nope/infer", GOOD), 404, "unknown model 'nope'")
    assert_error(post(server, "/v2/models/linear/versions/7/infer", GOOD), 404, "no version '7'")
    assert_error(post(server, "/v2/models/linear/versions/x/infer", GOOD), 404, "no version 'x'")
    assert_error(httpx.get(f"{server.url}/v2/models/nope"), 404, "unknown model")
    assert_error(httpx.get(f"{server.url}/v1/models/linear/versions/3"), 404, "no version")
    assert_error(httpx.get(f"{server.url}/no/such/path"), 404, "not found")
    still_serving(server)


def test_oversized_body_is_413(server):
    big = np.ones((5000, 4), np.float32)  # 80 kB of binary data, above the 64 KiB limit
    content, headers = binary_request(big)
    assert_error(post(server, "/v2/models/linear/infer", content=content, headers=headers), 413, "exceeds the limit")
    still_serving(server)


def test_a_slow_client_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
                  b"Content-Type: application/json\r\n\r\n{")
        s.settimeout(10)
        reply = b""
        while b"}" not in reply:  # the body never comes; the server answers after its body timeout
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408") and "did not arrive" in reply
    still_serving(server)


def test_a_failing_model_is_500_and_a_slow_one_times_out(server):
    assert_error(post(server, "/v2/models/scripted/infer", tensor(data=[1, -2, 3, 4])), 500, "negative numbers")
    assert_error(post(server, "/v2/models/scripted/infer", tensor(data=[1, 2, 3, 4000])), 503, "no result within")
    for _ in range(100):  # the slow inference still holds the model's only worker for a moment
        ok = post(server, "/v2/models/scripted/infer", GOOD)
        if ok.status_code != 503:
            break
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [0.0, 0.0, 0.0]
    still_serving(server)


def test_repository_calls_need_the_token(server):
    assert_error(post(server, "/v2/repository/index"), 401, "needs a bearer token")
    r = post(server, "/v2/repository/models/linear/unload", headers={"Authorization": "Bearer wrong"})
    assert_error(r, 401, "wrong bearer token")
    assert r.headers["www-authenticate"] == "Bearer"
    r = post(server, "/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and {m["name"] for m in r.json()} == {"linear", "scripted"}
    assert_error(post(server, "/v2/repository/models/nope/load", headers={"Authorization": f"Bearer {TOKEN}"}),
                 404, "no model folder")
    still_serving(server)  # inference does not need the token unless the server is told so
