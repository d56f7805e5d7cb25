"""`edgepilot monitor --url`: a real `edgepilot serve` on loopback is read through its /metrics from outside, and the
readings say what the server did (requests, errors, latency, queue/compute time, batch size, its system gauges)."""
from __future__ import annotations

import json
import math
import socket

import httpx
import numpy as np
import pytest

from brokers import free_port
from edgepilot.errors import ConfigError
from edgepilot.monitor.exposition import Histogram, parse
from edgepilot.monitor.remote import ESTIMATE, EndpointError, RemoteCollector, RemoteReader, metrics_url, scrape
from edgepilot.monitor.sampler import Monitor
from servers import linear_onnx, serving
from test_cli import edgepilot

ROWS = 2  # samples per request: each executed inference of a lone request has this batch size


def body(rows: int = ROWS) -> dict:
    x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def infer(server, n: int) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(n):
            assert c.post("/v2/models/linear/infer", json=body()).status_code == 200


def server_value(server, name: str, **labels: str) -> float:
    """What the server's own registry holds, read in its process: the truth the remote readings must match."""
    return server.app_state.metrics.registry.get_sample_value(name, labels) or 0.0


def by_key(readings) -> dict:
    return {r.key: r for r in readings}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    linear_onnx(root / "linear" / "1" / "model.onnx")
    return root


@pytest.fixture()
def server(repo):
    with serving(repo) as s:
        yield s


def test_readings_match_what_the_server_did(server):
    reader = RemoteReader("srv")
    first = by_key(reader.readings(scrape(server.url + "/metrics"), now=100.0))
    assert not any(k.startswith("inference_requests_total") for k in first)  # nothing served yet
    infer(server, 5)
    with httpx.Client(base_url=server.url) as c:  # a request the server refuses: counted as an error
        assert c.post("/v2/models/linear/infer", json={"inputs": []}).status_code == 400
    got = by_key(reader.readings(scrape(server.url), now=110.0))
    key = "{model=linear,version=1}"
    assert got["inference_requests_total" + key].value == 5
    assert got["inference_requests_per_s" + key].value == pytest.approx(0.5)  # 5 requests over the 10 s given
    assert got["inference_request_errors_total" + key].value == 0
    assert got["inference_request_errors_total{model=linear}"].value == 1  # refused before a version was chosen
    assert got["inference_request_errors_per_s{model=linear}"].value == pytest.approx(0.1)
    labels = {"model": "linear", "version": "1", "protocol": "kserve"}
    mean_ms = server_value(server, "edgepilot_serve_request_seconds_sum", **labels) / 5 * 1e3
    assert got["inference_latency_ms" + key].value == pytest.approx(mean_ms)
    assert got["inference_latency_ms_since_start" + key].value == pytest.approx(mean_ms)
    p50, p95 = got["inference_latency_p50_ms" + key], got["inference_latency_p95_ms" + key]
    assert ESTIMATE in p50.source and ESTIMATE in p95.source and "linear" in p95.key
    assert 0 < p50.value <= p95.value <= 10_000  # inside the finite buckets (the largest is 10 s)
    assert got["inference_batch_size" + key].value == ROWS
    vl = {"model": "linear", "version": "1"}
    assert got["inference_compute_ms" + key].value == pytest.approx(
        server_value(server, "edgepilot_serve_compute_seconds_sum", **vl) / 5 * 1e3)
    assert got["inference_compute_ms" + key].value <= got["inference_latency_ms" + key].value
    # the server's own system gauges come through with their units and sources
    assert 0 < got["memory_percent"].value <= 100 and got["memory_percent"].unit == "%"
    assert "psutil" in got["memory_total_bytes"].source and got["memory_total_bytes"].unit == "B"
    quiet = by_key(reader.readings(scrape(server.url), now=120.0))
    assert quiet["inference_requests_per_s" + key].value == 0
    assert "inference_latency_ms" + key not in quiet  # no request in that window: no mean, no percentile
    assert quiet["inference_latency_ms_since_start" + key].value == pytest.approx(mean_ms)


def test_a_restarted_server_counts_from_zero_again(repo):
    reader = RemoteReader("srv")
    with serving(repo) as a:
        infer(a, 4)
        reader.readings(scrape(a.url), now=0.0)
    with serving(repo) as b:  # the "same" endpoint after a restart: fresh counters, fresh _created
        infer(b, 2)
        got = by_key(reader.readings(scrape(b.url), now=2.0))
    key = "{model=linear,version=1}"
    assert got["inference_requests_total" + key].value == 2
    assert got["inference_requests_per_s" + key].value == pytest.approx(1.0)  # 2 new requests, not 2 - 4
    assert got["inference_latency_ms" + key].value > 0


def test_parser_reads_the_servers_real_exposition(server):
    infer(server, 3)
    text = httpx.get(server.url + "/metrics").text
    exp = parse(text)
    key = (("model", "linear"), ("protocol", "kserve"), ("version", "1"))
    h = exp.histograms["edgepilot_serve_request_seconds"][key]
    assert h.count == 3 and h.buckets[-1] == (math.inf, 3) and len(h.buckets) == 15
    assert [le for le, _ in h.buckets][:3] == [0.0005, 0.001, 0.002]
    assert all(a[1] <= b[1] for a, b in zip(h.buckets, h.buckets[1:]))  # cumulative
    assert h.sum == pytest.approx(server_value(server, "edgepilot_serve_request_seconds_sum", **dict(key)))
    assert h.created is not None
    c = exp.counters["edgepilot_serve_requests"][(("code", "200"),) + key]
    assert c.value == 3 and c.created is not None
    assert exp.help["edgepilot_cpu_percent"] == "cpu_percent (%)"
    info = {dict(g.labels)["source"]: dict(g.labels)["detail"] for g in exp.gauges["edgepilot_source_info"]}
    assert "psutil" in info["memory"]


def test_escaped_label_values_survive_the_round_trip():
    from edgepilot.serve.metrics import ServeMetrics

    metrics = ServeMetrics()  # the server's metrics: the very code that writes /metrics
    odd = 'we"ird\\name\nline2'
    for seconds in (0.0015, 0.0015, 0.003, 0.03):
        metrics.observe_request(odd, 7, "kserve", 200, seconds)
    text = metrics.render()[0].decode()
    assert '\\"' in text and "\\\\" in text and "\\n" in text  # the exposition escapes them
    exp = parse(text)
    h = exp.histograms["edgepilot_serve_request_seconds"][(("model", odd), ("protocol", "kserve"), ("version", "7"))]
    assert h.count == 4 and h.sum == pytest.approx(0.036)
    assert h.quantile(0.5) == pytest.approx(0.002)  # rank 2 of 4 ends exactly at the (0.001, 0.002] bucket's top
    assert 0.02 < h.quantile(0.95) <= 0.05  # the largest observation's bucket
    got = by_key(RemoteReader("s").readings(exp))
    assert got['inference_requests_total{model=we"ird\\name\nline2,version=7}'].value == 4


def test_bucket_quantiles_follow_prometheus_histogram_quantile():
    h = Histogram(((1.0, 2), (2.0, 6), (4.0, 8), (math.inf, 10)), 10, 20.0)
    assert h.quantile(0.5) == pytest.approx(1.75)  # rank 5: 3 of the 4 in (1, 2]
    assert h.quantile(0.1) == pytest.approx(0.5)  # rank 1 of the 2 in (0, 1]
    assert h.quantile(0.95) == 4.0  # in +Inf: only the highest finite bound is known
    assert Histogram(((1.0, 0), (math.inf, 0)), 0, 0.0).quantile(0.5) is None
    later = Histogram(((1.0, 3), (2.0, 9), (4.0, 12), (math.inf, 14)), 14, 30.0)
    d = later.minus(h)
    assert d.buckets == ((1.0, 1), (2.0, 3), (4.0, 4), (math.inf, 4)) and d.count == 4 and d.mean == 2.5
    restarted = Histogram(((1.0, 1), (2.0, 1), (4.0, 1), (math.inf, 1)), 1, 0.5)
    assert restarted.minus(h) == restarted  # fewer observations than before: counted from zero


@pytest.mark.parametrize("text", ["<html><body>dashboard</body></html>", '{"error": "nope"}', "cpu 12 percent",
                                  'edgepilot_serve_requests_total{model="linear",vers',  # a truncated body
                                  '# TYPE h histogram\nh_bucket{le="1"} 2\nh_count 2\n',  # no +Inf bucket
                                  '# TYPE h histogram\nh_bucket{le="x"} 2\n'])
def test_what_is_not_exposition_is_refused(text):
    from edgepilot.monitor.exposition import NotExposition

    with pytest.raises(NotExposition):
        parse(text)


def test_unreachable_endpoints_give_one_clear_line(server):
    refused = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointError) as e:
        scrape(metrics_url(refused))
    assert "connection refused" in str(e.value) and e.value.hint and "\n" not in str(e.value)
    with pytest.raises(EndpointError, match="HTTP 404"):
        scrape(server.url + "/no/metrics/here")
    with pytest.raises(EndpointError, match="did not answer Prometheus text"):
        scrape(server.url + "/v2")  # the server's metadata: JSON, status 200
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(EndpointError, match="did not answer within"):
            scrape(f"http://127.0.0.1:{silent.getsockname()[1]}/metrics", timeout_s=0.3)
    with pytest.raises(ConfigError):
        metrics_url("ftp://127.0.0.1:21")
    assert metrics_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("http://dev:9100/custom") == "http://dev:9100/custom"


def test_a_server_that_is_down_is_unreachable_then_read_again(repo):
    from edgepilot.serve.app import BackgroundServer, create_app, open_repository

    port = free_port()
    monitor = Monitor([RemoteCollector(f"http://127.0.0.1:{port}", timeout_s=2)])
    try:
        s0 = monitor.sample()  # nothing listens yet: no crash, no reading, the reason shown
        remote = next(s for s in s0.sources if s.name == "remote")
        assert not remote.available and remote.detail.startswith("unreachable") and "refused" in remote.detail
        assert s0.readings == []
        server = BackgroundServer(create_app(open_repository(repo)), "127.0.0.1", port).start()
        try:
            server.url = f"http://127.0.0.1:{port}"
            infer(server, 2)
            s1 = monitor.sample()
        finally:
            server.stop()
        assert next(s for s in s1.sources if s.name == "remote").available
        assert s1.value("inference_requests_total{model=linear,version=1}") == 2
        assert any(s.name == "remote memory" and s.available for s in s1.sources)  # the server's own sources
        s2 = monitor.sample()  # stopped again
        assert not next(s for s in s2.sources if s.name == "remote").available
        assert not any(s.name.startswith("remote ") for s in s2.sources)
    finally:
        monitor.close()


def test_cli_live_url_shows_the_servers_inference(server, tmp_path):
    infer(server, 3)
    out = edgepilot("monitor", "--url", server.url, "--duration", "1", "--interval", "0.5", "--no-store").stdout
    assert "linear v1 requests" in out and "3 total" in out and "0 errors" in out
    assert "linear v1 latency since start" in out and "p95 ≈" in out and ESTIMATE in out
    assert "linear v1 queue / compute" in out and f"batch {ROWS:.1f}" in out
    assert "remote memory" in out and "Memory" in out
    db = tmp_path / "m.db"
    lines = edgepilot("monitor", "--url", server.url, "--duration", "0.5", "--interval", "0.5", "--json",
                      "--db", str(db)).stdout.splitlines()
    last = {r["key"]: r for r in json.loads(lines[-1])["readings"]}
    assert last["inference_requests_total{model=linear,version=1}"]["value"] == 3
    assert last["inference_requests_per_s{model=linear,version=1}"]["value"] == 0  # nothing sent meanwhile
    mean_ms = server_value(server, "edgepilot_serve_request_seconds_sum", model="linear", version="1",
                           protocol="kserve") / 3 * 1e3
    assert last["inference_latency_ms_since_start{model=linear,version=1}"]["value"] == pytest.approx(mean_ms)
    exported = edgepilot("monitor", "export", str(tmp_path / "h.csv"), "--db", str(db)).stdout
    assert int(exported.split()[0]) > 0 and "inference_requests_total" in (tmp_path / "h.csv").read_text()


def test_cli_refused_port(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = edgepilot("monitor", "sources", "--url", url, ok=False)
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1 and "connection refused" in proc.stderr
    out = edgepilot("monitor", "--url", url, "--duration", "0.5", "--interval", "0.5", "--no-store").stdout
    assert "unreachable" in out and "connection refused" in out and "2 samples" in out


def test_bearer_token_for_a_protected_endpoint():
    """A reverse proxy (or an exporter) that guards /metrics with a bearer token, serving our server's real text."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from edgepilot.serve.metrics import ServeMetrics

    metrics = ServeMetrics()
    metrics.observe_request("linear", 1, "kserve", 200, 0.004)
    page, content_type = metrics.render()

    class Guarded(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            ok = self.headers.get("Authorization") == "Bearer s3cret"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", content_type if ok else "text/plain")
            self.end_headers()
            self.wfile.write(page if ok else b"unauthorized")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(EndpointError, match="HTTP 401") as e:
            scrape(url)
        assert "--token" in e.value.hint
        got = by_key(RemoteReader("s").readings(scrape(url, token="s3cret")))
        assert got["inference_requests_total{model=linear,version=1}"].value == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_pipelines_server_gives_fps_queue_and_drops():
    """The server `edgepilot run` starts for `server:` in its YAML, over the pipeline's real statistics."""
    from edgepilot.monitor.collectors.inference import InferenceRecorder
    from edgepilot.runtime.stats import PipelineStats
    from edgepilot.serve.app import pipeline_server

    stats = PipelineStats(recorder=InferenceRecorder())
    stats.count("received", n=5)
    stats.count("dropped", n=2)
    stats.completed(3)
    stats.set_queue_depth(4)
    server, _ = pipeline_server("127.0.0.1", free_port(), None, stats)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.server.config.port}"
        reader = RemoteReader("p")
        first = by_key(reader.readings(scrape(url), now=0.0))
        stats.count("dropped", n=3)
        got = by_key(reader.readings(scrape(url), now=5.0))
    finally:
        server.stop()
    assert first["inference_pipeline_items_total{what=dropped}"].value == 2
    assert got["inference_pipeline_items_total{what=dropped}"].value == 5
    assert got["inference_pipeline_items_per_s{what=dropped}"].value == pytest.approx(0.6)  # 3 more in 5 s
    assert got["inference_pipeline_items_total{what=completed}"].value == 3
    assert got["inference_pipeline_queue_depth"].value == 4 and got["inference_pipeline_fps"].value >= 0
    assert not any(k.startswith("inference_requests_total") for k in got)  # no models served
    from edgepilot.monitor.live import render_frame
    from edgepilot.monitor.readings import Sample

    frame = render_frame(Sample(0.0, list(got.values()))).plain
    assert "pipeline" in frame and "queue 4" in frame and "dropped 5 (0.6/s)" in frame and "completed 3" in frame
