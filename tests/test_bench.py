"""The measurement harness: statistics, budgets, concurrency and the fresh-subprocess benchmark."""
from __future__ import annotations

import numpy as np
import pytest

from edgepilot.engines import open_session
from edgepilot.errors import ConfigError, InputError, ModelError
from edgepilot.evaluate.benchmark import BenchConfig, BenchResult, benchmark
from edgepilot.evaluate.latency import LatencyStats, measure_latency, synthetic_feeds
from edgepilot.model import Format, Model, Quantization, TensorSpec


def test_stats_from_known_samples():
    s = LatencyStats.from_samples([0.001 * i for i in range(1, 101)], warmup=0, batch=4, concurrency=1, wall_s=2.0)
    assert s.runs == 100
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.min_ms == pytest.approx(1) and s.max_ms == pytest.approx(100)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.throughput_sps == pytest.approx(100 * 4 / 2.0)


def test_synthetic_feeds_follow_specs():
    specs = [TensorSpec("img", "float32", (None, 3, 8, 8)), TensorSpec("ids", "int64", ("batch", 5))]
    feeds = synthetic_feeds(specs, batch=3)
    assert feeds["img"].shape == (3, 3, 8, 8) and feeds["img"].dtype == np.float32
    assert feeds["ids"].shape == (3, 5) and feeds["ids"].dtype == np.int64
    q = [TensorSpec("q", "int8", (1, 4), Quantization((0.1,), (0,)))]
    assert synthetic_feeds(q)["q"].shape == (1, 4) and synthetic_feeds(q)["q"].dtype == np.int8
    with pytest.raises(ConfigError, match="fixed batch of 1"):  # never a batch-1 run reported as batch 3
        synthetic_feeds(q, batch=3)
    with pytest.raises(ConfigError, match="'other', which the model does not have"):
        synthetic_feeds(q, shapes={"other": (1, 4)})
    with pytest.raises(InputError, match="dynamic dimension 2"):
        synthetic_feeds([TensorSpec("x", "float32", (1, 3, None, None))])
    assert synthetic_feeds([TensorSpec("x", "float32", (1, 3, None, None))], shapes={"x": (1, 3, 4, 4)})["x"].shape \
        == (1, 3, 4, 4)


def test_runs_budget_and_concurrency(built):
    model = Model.load(built(Format.ONNX, "mlp").path)
    opened = []

    def factory():
        s = open_session(model, "onnxruntime", threads=1)
        opened.append(s)
        return s

    feeds = synthetic_feeds(model.inputs, batch=2)
    stats = measure_latency(factory, feeds, batch=2, warmup=3, runs=50, concurrency=3)
    assert stats.runs == 50 and stats.concurrency == 3
    assert len(opened) == 3  # one session per concurrent caller
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput_sps == pytest.approx(50 * 2 / stats.wall_s)


def test_time_budget(built):
    model = Model.load(built(Format.ONNX, "mlp").path)
    stats = measure_latency(lambda: open_session(model, "onnxruntime"), synthetic_feeds(model.inputs),
                            batch=1, warmup=0, seconds=0.2)
    assert stats.runs > 10
    assert 0.2 <= stats.wall_s < 1.0


def test_bad_budget():
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, {}, batch=1, runs=0)


@pytest.mark.parametrize("fmt", [Format.ONNX, Format.TFLITE, Format.OPENVINO])
def test_benchmark_in_subprocess(built, fmt):
    r = benchmark(BenchConfig(model=str(built(fmt, "cnn").path), runs=30, warmup=2, threads=1, batch=2))
    assert isinstance(r, BenchResult)
    assert r.format == fmt.value and r.latency.runs == 30 and r.latency.batch == 2
    assert r.load_ms > 0
    # the subprocess loaded a runtime and a model: its high-water mark is above its start
    assert r.peak_rss_mb > r.rss_before_load_mb > 0
    assert 0 <= r.outside_cpu_load_pct <= 100
    assert BenchResult.model_validate_json(r.model_dump_json()) == r


def test_benchmark_errors_come_back_typed(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_text("not a model")
    with pytest.raises(ModelError, match="not a tflite model"):
        benchmark(BenchConfig(model=str(bad)))
