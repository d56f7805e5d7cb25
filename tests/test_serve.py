"""`edgepilot serve` speaks KServe v2 and TF Serving: Triton's own client and TF Serving's REST format get the
engine's results from a real uvicorn."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

from edgepilot.engines import open_session
from edgepilot.model import Model
from servers import B1, W1, linear_onnx, pair_onnx, serving

tritonhttp = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    linear_onnx(root / "linear" / "1" / "model.onnx")
    linear_onnx(root / "score" / "1" / "model.onnx", W1[:, :1], B1[:1])  # one value per sample
    (root / "linear" / "config.yaml").write_text("max_batch: 8\nmax_delay_ms: 1\ninstances: 2\nthreads: 1\n")
    pair_onnx(root / "pair" / "1" / "pair.onnx")
    return root


@pytest.fixture(scope="module")
def server(repo):
    with serving(repo) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def engine_outputs(path, feeds):
    with open_session(Model.load(path)) as s:
        return s.run(feeds)


def test_health_and_metadata_through_tritonclient(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and client.is_model_ready("linear", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "edgepilot" and {"binary_tensor_data", "model_repository", "statistics"} <= set(
        meta["extensions"])
    m = client.get_model_metadata("linear")
    assert m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert m["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    p = client.get_model_metadata("pair", "1")
    assert [(t["name"], t["datatype"]) for t in p["inputs"]] == [("a", "FP32"), ("b", "INT32")]
    assert [(t["name"], t["datatype"]) for t in p["outputs"]] == [("sum", "FP32"), ("positive", "BOOL")]


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_tritonclient_inference_equals_the_engine(client, repo, binary_in, binary_out):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    inp = tritonhttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = tritonhttp.InferRequestedOutput("output", binary_data=binary_out)
    result = client.infer("linear", [inp], outputs=[out], request_id="r-1")
    got = result.as_numpy("output")
    expected = engine_outputs(repo / "linear" / "1" / "model.onnx", {"input": x})["output"]
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, x @ W1 + B1, rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_version"] == "1"


def test_two_inputs_two_outputs_of_several_datatypes(client, repo):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 3)).astype(np.float32)
    b = rng.integers(-2, 3, (3, 3)).astype(np.int32)
    expected = engine_outputs(repo / "pair" / "1" / "pair.onnx", {"a": a, "b": b})
    for binary in (True, False):
        inputs = [tritonhttp.InferInput("a", [3, 3], "FP32"), tritonhttp.InferInput("b", [3, 3], "INT32")]
        inputs[0].set_data_from_numpy(a, binary_data=binary)
        inputs[1].set_data_from_numpy(b, binary_data=binary)
        result = client.infer("pair", inputs)  # no outputs named: all of them, as binary (the client asks so)
        np.testing.assert_array_equal(result.as_numpy("sum"), expected["sum"])
        assert result.as_numpy("positive").dtype == np.bool_
        np.testing.assert_array_equal(result.as_numpy("positive"), (a + b) > 0)


def test_raw_json_request_and_nested_data(server):
    x = [[1.0, 2.0, 3.0, 4.0]]
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x}]}
    r = httpx.post(f"{server.url}/v2/models/linear/versions/1/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = r.json()["outputs"][0]
    assert out["name"] == "output" and out["shape"] == [1, 3] and out["datatype"] == "FP32"
    np.testing.assert_allclose(out["data"], (np.array(x, np.float32) @ W1 + B1).ravel(), rtol=1e-5)


def test_tf_serving_predict_row_and_column_give_the_same_predictions(server, repo):
    x = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    expected = engine_outputs(repo / "linear" / "1" / "model.onnx", {"input": x})["output"]
    row = httpx.post(f"{server.url}/v1/models/linear:predict", json={"instances": x.tolist()})
    col = httpx.post(f"{server.url}/v1/models/linear/versions/1:predict",
                     json={"signature_name": "serving_default", "inputs": {"input": x.tolist()}})
    assert row.status_code == 200 and col.status_code == 200
    np.testing.assert_allclose(row.json()["predictions"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(col.json()["outputs"], expected, rtol=1e-6, atol=1e-6)


def test_tf_serving_classify_and_regress_where_the_model_fits(server, repo):
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    scores = engine_outputs(repo / "linear" / "1" / "model.onnx", {"input": x})["output"]
    c = httpx.post(f"{server.url}/v1/models/linear:classify",
                   json={"examples": [{"input": row} for row in x.tolist()]})
    assert c.status_code == 200
    results = c.json()["results"]
    assert [[label for label, _ in r] for r in results] == [["0", "1", "2"]] * 3
    np.testing.assert_allclose([[s for _, s in r] for r in results], scores, rtol=1e-6, atol=1e-6)
    # shared features go in "context"; the regression output is one value per example
    r = httpx.post(f"{server.url}/v1/models/score/versions/1:regress",
                   json={"context": {}, "examples": [{"input": row} for row in x.tolist()]})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["results"], (x @ W1[:, :1] + B1[:1])[:, 0], rtol=1e-5, atol=1e-5)
    wrong = httpx.post(f"{server.url}/v1/models/linear:regress", json={"examples": [{"input": x[0].tolist()}]})
    assert wrong.status_code == 400 and "one value per sample" in wrong.json()["error"]
    bare = httpx.post(f"{server.url}/v1/models/linear:classify", json={"examples": [x[0].tolist()]})
    assert bare.status_code == 400 and "examples" in bare.json()["error"]
    pair = httpx.post(f"{server.url}/v1/models/pair:classify",
                      json={"examples": [{"a": [0.0, 0.0, 0.0], "b": [0, 0, 0]}]})
    assert pair.status_code == 400 and ":predict" in pair.json()["error"]


def test_tf_serving_row_format_with_several_inputs_and_outputs(server):
    instances = [{"a": [0.5, -1.0, 2.0], "b": [1, 0, -3]}, {"a": [-0.5, 0.0, 0.1], "b": [0, 1, 0]}]
    r = httpx.post(f"{server.url}/v1/models/pair:predict", json={"instances": instances})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert preds[0] == {"sum": [1.5, -1.0, -1.0], "positive": [True, False, False]}
    assert preds[1]["positive"] == [False, True, True]


def test_tf_serving_status_and_metadata(server):
    s = httpx.get(f"{server.url}/v1/models/linear").json()
    assert s == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                           "status": {"error_code": "OK", "error_message": ""}}]}
    m = httpx.get(f"{server.url}/v1/models/linear/metadata").json()
    sig = m["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert m["model_spec"]["version"] == "1"
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "4"]


def test_statistics_and_metrics_count_what_was_served(client, server):
    x = np.ones((2, 4), np.float32)
    inp = tritonhttp.InferInput("input", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    before = client.get_inference_statistics("linear")["model_stats"][0]
    client.infer("linear", [inp])
    after = client.get_inference_statistics("linear")["model_stats"][0]
    assert after["name"] == "linear" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["execution_count"] >= before["execution_count"] + 1
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    text = httpx.get(f"{server.url}/metrics").text
    assert 'edgepilot_serve_requests_total{code="200",model="linear",protocol="kserve",version="1"}' in text
    assert 'edgepilot_serve_batch_size_count{model="linear",version="1"}' in text
    assert 'edgepilot_serve_queue_seconds_count{model="linear",version="1"}' in text
    assert 'edgepilot_serve_request_seconds_bucket{le="0.0005",model="linear",protocol="kserve",version="1"}' in text


def test_repository_index_unload_and_load(client):
    index = {(m["name"], m.get("version")): m["state"] for m in client.get_model_repository_index()}
    assert index == {("linear", "1"): "READY", ("pair", "1"): "READY", ("score", "1"): "READY"}
    client.unload_model("pair")
    assert not client.is_model_ready("pair")
    assert {m["name"]: m["state"] for m in client.get_model_repository_index()}["pair"] == "UNAVAILABLE"
    client.load_model("pair")
    assert client.is_model_ready("pair")
