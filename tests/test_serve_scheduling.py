"""Dynamic batching across concurrent requests (the runtime's scheduler), instances, warm-up at load, and a new
version swapped in while requests are in flight without failing any."""
from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from edgepilot.assets import asset
from edgepilot.engines.fake import FakeEngine, registered
from servers import B1, W1, W2, heavy_onnx, linear_onnx, nms_onnx, reshape_onnx, serving


def infer(url, model, x, version=None):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(url + path, json=body, timeout=30)
    return r.status_code, r.json()


def output(reply, shape=(1, 3)):
    return np.array(reply["outputs"][0]["data"], np.float32).reshape(shape)


def test_concurrent_requests_are_batched_together(tmp_path):
    linear_onnx(tmp_path / "linear" / "1" / "model.onnx")
    # one worker and a long batching window: four concurrent single-sample requests make exactly one batch of four
    (tmp_path / "linear" / "config.yaml").write_text("max_batch: 4\nmax_delay_ms: 5000\ninstances: 1\nwarmup: 0\n")
    xs = [np.full((1, 4), i, np.float32) for i in range(4)]
    with serving(tmp_path) as server, ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda x: infer(server.url, "linear", x), xs))
        stats = httpx.get(f"{server.url}/v2/models/linear/stats").json()["model_stats"][0]
    for x, (status, reply) in zip(xs, replies):
        assert status == 200
        np.testing.assert_allclose(output(reply), x @ W1 + B1, rtol=1e-5)
    assert stats["inference_count"] == 4 and stats["execution_count"] == 1
    assert [b["batch_size"] for b in stats["batch_stats"]] == [4]


def test_samples_of_different_sizes_to_a_real_dynamic_detector_never_share_a_batch(tmp_path):
    """PP-OCRv4's text detector takes any height and width: concurrent requests of two sizes are batched by size
    (they cannot stack into one tensor; before, that killed the model's worker and every later request timed out)."""
    import onnxruntime as ort

    model = asset("ppocr-det-v4", download=False)
    (tmp_path / "det" / "1").mkdir(parents=True)
    shutil.copy(model, tmp_path / "det" / "1" / "model.onnx")
    (tmp_path / "det" / "config.yaml").write_text("max_batch: 4\nmax_delay_ms: 2000\ninstances: 1\nwarmup: 0\n"
                                                  "inline: false\n")
    rng = np.random.default_rng(0)
    xs = [rng.random(shape, np.float32) for shape in ((1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 64, 96))]
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def infer_det(url, x):
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        return httpx.post(f"{url}/v2/models/det/infer", json=body, timeout=30)

    with serving(tmp_path) as server, ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda x: infer_det(server.url, x), xs))
        stats = httpx.get(f"{server.url}/v2/models/det/stats").json()["model_stats"][0]
        after = infer_det(server.url, xs[1])  # and it serves on
    for x, r in zip([*xs, xs[1]], [*replies, after]):
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        want = reference.run(None, {"x": x})[0]
        assert out["shape"] == list(want.shape)
        np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(want.shape), want, atol=1e-4)
    assert stats["inference_count"] == 3
    assert sorted(b["batch_size"] for b in stats["batch_stats"]) == [1, 2]  # the two 64x96 together, 96x64 alone


def test_a_request_larger_than_max_batch_and_a_fixed_batch_model(tmp_path):
    linear_onnx(tmp_path / "linear" / "1" / "model.onnx")
    (tmp_path / "linear" / "config.yaml").write_text("max_batch: 2\nmax_delay_ms: 0\n")
    linear_onnx(tmp_path / "fixed" / "1" / "model.onnx", batch=3)  # takes exactly 3: the scheduler pads
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with serving(tmp_path) as server:
        for model in ("linear", "fixed"):
            status, reply = infer(server.url, model, x)
            assert status == 200
            np.testing.assert_allclose(output(reply, (5, 3)), x @ W1 + B1, rtol=1e-5, atol=1e-6)
        batches = httpx.get(f"{server.url}/v2/models/fixed/stats").json()["model_stats"][0]["batch_stats"]
    assert {b["batch_size"] for b in batches} == {3, 2}  # 5 samples: one full batch, one padded


def test_models_without_a_batch_dimension_answer_whole_outputs(tmp_path):
    """NMS inside the graph gives [K, 3], K the boxes kept: a request gets all K rows (split by sample, it had the
    first row alone), concurrent ones too. A model whose outputs do not follow its first dimension at load runs
    each request as it is (before: an IndexError in the worker); max_batch: 0 says so for any model. One the load
    could not tell refuses a request of two samples (their rows have no sample axis to part them by)."""
    import onnxruntime as ort

    nms = nms_onnx(tmp_path / "nms" / "1" / "model.onnx")
    nms_onnx(tmp_path / "nms-batch" / "1" / "model.onnx", batch="batch")
    reshape_onnx(tmp_path / "reshape" / "1" / "model.onnx")
    linear_onnx(tmp_path / "whole" / "1" / "model.onnx")
    (tmp_path / "whole" / "config.yaml").write_text("max_batch: 0\n")
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 1.05], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7], [8, 8, 9, 9]]],
                     np.float32)
    scores = np.array([[[0.9, 0.8, 0.7, 0.2, 0.6, 0.1]]], np.float32)  # 3 kept: 0 (1 overlaps it), 2 and 4
    want = ort.InferenceSession(str(nms), providers=["CPUExecutionProvider"]).run(
        None, {"boxes": boxes, "scores": scores})[0]
    body = {"inputs": [{"name": "boxes", "shape": [1, 6, 4], "datatype": "FP32", "data": boxes.ravel().tolist()},
                       {"name": "scores", "shape": [1, 1, 6], "datatype": "FP32", "data": scores.ravel().tolist()}]}
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with serving(tmp_path) as server, ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{server.url}/v2/models/nms/infer", json=body, timeout=30),
                                range(4)))
        assert server.app_state.repo.get("reshape").whole and server.app_state.repo.get("whole").whole
        reshaped = infer(server.url, "reshape", x)
        # the load's seeded synthetic run keeps one box of one image: K = 1 = the batch, so nothing told it apart
        assert not server.app_state.repo.get("nms-batch").whole
        two = {"inputs": [{**t, "shape": [2, *t["shape"][1:]], "data": t["data"] * 2} for t in body["inputs"]]}
        refused = httpx.post(f"{server.url}/v2/models/nms-batch/infer", json=two, timeout=30)
        one = httpx.post(f"{server.url}/v2/models/nms-batch/infer", json=body, timeout=30)
        status, reply = infer(server.url, "whole", x[:2])
        stats = httpx.get(f"{server.url}/v2/models/whole/stats").json()["model_stats"][0]
    for r in replies:
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [3, 3] and out["datatype"] == "INT64" and out["data"] == want.ravel().tolist()
    assert refused.status_code == 400 and "one sample per request" in refused.json()["error"]
    assert one.status_code == 200 and one.json()["outputs"][0]["data"] == want.ravel().tolist()
    assert reshaped[0] == 200 and output(reshaped[1], (2, 6)).tolist() == x.reshape(2, 6).tolist()
    assert status == 200 and stats["execution_count"] == 1  # two rows, one run
    np.testing.assert_allclose(output(reply, (2, 3)), x[:2] @ W1 + B1, rtol=1e-5)


def test_instances_threads_and_warm_up_at_load(tmp_path):
    linear_onnx(tmp_path / "scripted" / "1" / "model.onnx")
    (tmp_path / "scripted" / "config.yaml").write_text("engine: fake-warm\ninstances: 3\nthreads: 1\nwarmup: 2\n")
    engine = FakeEngine.scripted(lambda f: {"output": f["input"][:, :3] * 2}, name="fake-warm")
    with registered(engine), serving(tmp_path) as server:
        served = server.app_state.repo.get("scripted")
        assert len(served.sessions) == 3 and all(s.threads == 1 for s in served.sessions)
        assert [s.calls for s in served.sessions] == [2, 2, 2]  # warmed up before the first request
        status, reply = infer(server.url, "scripted", np.ones((1, 4), np.float32))
        assert status == 200 and reply["outputs"][0]["data"] == [2.0, 2.0, 2.0]
        assert sum(s.calls for s in served.sessions) == 7


def test_a_new_version_is_swapped_in_without_failing_requests_in_flight(tmp_path):
    linear_onnx(tmp_path / "linear" / "1" / "model.onnx")
    (tmp_path / "linear" / "config.yaml").write_text("max_delay_ms: 1\ninstances: 2\nthreads: 1\n")
    x = np.ones((1, 4), np.float32)
    old, new = x @ W1 + B1, x @ W2 + B1
    stop = threading.Event()
    results: list[tuple[int, dict]] = []

    def client(url):
        while not stop.is_set():
            results.append(infer(url, "linear", x))

    with serving(tmp_path) as server:
        threads = [threading.Thread(target=client, args=(server.url,)) for _ in range(4)]
        for t in threads:
            t.start()
        while len(results) < 20:
            threading.Event().wait(0.01)
        linear_onnx(tmp_path / "linear" / "2" / "model.onnx", w=W2)
        load = httpx.post(f"{server.url}/v2/repository/models/linear/load", timeout=60)
        seen_at_load = len(results)
        while len(results) < seen_at_load + 20:
            threading.Event().wait(0.01)
        stop.set()
        for t in threads:
            t.join(30)
        meta = httpx.get(f"{server.url}/v2/models/linear").json()
        old_version = httpx.get(f"{server.url}/v2/models/linear/versions/1")
    assert load.status_code == 200
    assert all(status == 200 for status, _ in results), [r for s, r in results if s != 200][:3]
    versions = [reply["model_version"] for _, reply in results]
    assert versions[:20] == ["1"] * 20 and versions[-4:] == ["2"] * 4
    for _, reply in results:
        np.testing.assert_allclose(output(reply), old if reply["model_version"] == "1" else new, rtol=1e-5)
    assert meta["versions"] == ["2"] and old_version.status_code == 404


@pytest.mark.parametrize("config,words", [("versions: [3]\n", "no folder for version"),
                                          ("engine: nope\n", "unknown engine"), ("max_batch: -1\n", "max_batch"),
                                          ("inline: true\nmax_batch: 4\n", "inline needs max_batch 1")])
def test_a_bad_config_leaves_the_model_unavailable_with_the_reason(tmp_path, config, words):
    linear_onnx(tmp_path / "linear" / "1" / "model.onnx")
    (tmp_path / "linear" / "config.yaml").write_text(config)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"\x08not a model")
    with serving(tmp_path) as server:
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        index = {m["name"]: m for m in httpx.post(f"{server.url}/v2/repository/index").json()}
        r = httpx.get(f"{server.url}/v2/models/linear")
    assert index["linear"]["state"] == "UNAVAILABLE" and words in index["linear"]["reason"]
    assert index["broken"]["state"] == "UNAVAILABLE" and "broken" in index["broken"]["reason"]
    assert r.status_code == 404 and words in r.json()["error"]


def test_one_sample_requests_of_a_fast_model_run_on_the_event_loop(tmp_path):
    linear_onnx(tmp_path / "inline" / "1" / "model.onnx")
    (tmp_path / "inline" / "config.yaml").write_text("max_batch: 1\nwarmup: 0\n")
    linear_onnx(tmp_path / "batched" / "1" / "model.onnx")  # max_batch 8 by default: the scheduler batches
    linear_onnx(tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.yaml").write_text("engine: fake-slow\nmax_batch: 1\n")
    slow = FakeEngine.scripted(lambda f: (time.sleep(0.003), {"output": f["input"][:, :3]})[1], name="fake-slow")
    linear_onnx(tmp_path / "sub-ms" / "1" / "model.onnx")  # under a millisecond, threads spinning: inline
    (tmp_path / "sub-ms" / "config.yaml").write_text("engine: fake-sub-ms\nmax_batch: 1\n")
    sub_ms = FakeEngine.scripted(lambda f: (time.sleep(0.0004), {"output": f["input"][:, :3]})[1], name="fake-sub-ms")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 3, 1, 2) * 8]
    with registered(slow), registered(sub_ms), serving(tmp_path) as server, ThreadPoolExecutor(4) as pool:
        repo = server.app_state.repo
        assert repo.get("inline").inline and not repo.get("batched").inline and not repo.get("slow").inline
        assert repo.get("sub-ms").inline
        # one-sample requests inline and larger ones through the scheduler share the session, concurrently
        replies = list(pool.map(lambda x: infer(server.url, "inline", x), xs))
        stats = httpx.get(f"{server.url}/v2/models/inline/stats").json()["model_stats"][0]
    for x, (status, reply) in zip(xs, replies):
        assert status == 200
        np.testing.assert_allclose(output(reply, (len(x), 3)), x @ W1 + B1, rtol=1e-5, atol=1e-6)
    assert stats["inference_count"] == sum(len(x) for x in xs) == stats["execution_count"]
    assert [b["batch_size"] for b in stats["batch_stats"]] == [1]


def _fast_unless_extreme(feeds):
    x = feeds["input"]
    if (x < -1000).any():
        raise RuntimeError("this model refuses very negative numbers")
    if (x > 1000).any():
        time.sleep(0.01)  # slower than INLINE_SLOW_S
    return {"output": x[:, :3]}


def test_an_inline_failure_is_an_error_and_a_slow_inline_inference_stops_inlining(tmp_path):
    linear_onnx(tmp_path / "varies" / "1" / "model.onnx")
    (tmp_path / "varies" / "config.yaml").write_text("engine: fake-varies\nmax_batch: 1\n")
    with registered(FakeEngine.scripted(_fast_unless_extreme, name="fake-varies")), serving(tmp_path) as server:
        served = server.app_state.repo.get("varies")
        assert served.inline
        status, reply = infer(server.url, "varies", np.full((1, 4), -2000, np.float32))
        assert status == 500 and "refuses very negative numbers" in reply["error"] and served.inline
        assert infer(server.url, "varies", np.full((1, 4), 2000, np.float32))[0] == 200
        assert not served.inline  # that one held the event loop for 10 ms: no more inline requests
        status, reply = infer(server.url, "varies", np.ones((1, 4), np.float32))
    assert status == 200 and reply["outputs"][0]["data"] == [1.0, 1.0, 1.0]


def test_idle_threads_sleep_only_for_a_tiny_model_whose_threads_take_every_core(tmp_path):
    linear_onnx(tmp_path / "tiny" / "1" / "model.onnx")
    heavy_onnx(tmp_path / "heavy" / "1" / "model.onnx")
    linear_onnx(tmp_path / "spinning" / "1" / "model.onnx")
    (tmp_path / "spinning" / "config.yaml").write_text("spin_wait: true\n")
    with serving(tmp_path) as server:
        repo = server.app_state.repo
        # None is onnxruntime's default: its idle threads spin, so the next request finds them awake
        assert (repo.get("tiny").spin_wait, repo.get("heavy").spin_wait, repo.get("spinning").spin_wait) == \
            (False, None, True)
        x = np.ones((1, 1024), np.float32)
        status, reply = infer(server.url, "heavy", x)
    assert status == 200 and output(reply, (1, 1024)).tolist() == x.tolist()
