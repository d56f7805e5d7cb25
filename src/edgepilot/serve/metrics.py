"""Prometheus metrics: requests, latency, queue and compute time, batch sizes per model and version; pipeline fps."""
from __future__ import annotations

from edgepilot.optional import require

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Pipeline statistics reach /metrics through PipelineCollector below, when the server runs inside `edgepilot run`.


class ServeMetrics:
    """One registry per server (not the process-wide default), so two servers in one process do not collide."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        labels = ["model", "version"]
        self.requests = prom.Counter("edgepilot_serve_requests", "Inference requests by outcome",
                                     labels + ["protocol", "code"], registry=self.registry)
        self.latency = prom.Histogram("edgepilot_serve_request_seconds", "Inference request latency, body in to "
                                      "body out", labels + ["protocol"], buckets=_LATENCY_BUCKETS,
                                      registry=self.registry)
        self.queue = prom.Histogram("edgepilot_serve_queue_seconds", "Time a request's samples waited for a "
                                    "worker", labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.compute = prom.Histogram("edgepilot_serve_compute_seconds", "Inference time of a request's samples",
                                      labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch = prom.Histogram("edgepilot_serve_batch_size", "Samples per executed inference (dynamic "
                                    "batching)", labels, buckets=_BATCH_BUCKETS, registry=self.registry)
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        """metric.labels(*labels), kept: prometheus_client validates and hashes the labels again at every call."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def observe_request(self, model: str, version: int | str, protocol: str, code: int, seconds: float) -> None:
        v = str(version)
        self._child(self.requests, model, v, protocol, str(code)).inc()
        if code < 400:
            self._child(self.latency, model, v, protocol).observe(seconds)

    def observe_compute(self, model: str, version: int, queue_s: float, compute_s: float) -> None:
        self._child(self.queue, model, str(version)).observe(queue_s)
        self._child(self.compute, model, str(version)).observe(compute_s)

    def observe_batch(self, model: str, version: int, size: int) -> None:
        self._child(self.batch, model, str(version)).observe(size)

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


class PipelineCollector:
    """The running pipeline's fps, queue depth and item counters (received, dropped, completed, errors ...)."""

    def __init__(self, stats) -> None:
        self.stats = stats

    def describe(self):
        return []

    def collect(self):
        core = require("prometheus_client.core", "serve")
        s = self.stats.snapshot()
        yield core.GaugeMetricFamily("edgepilot_pipeline_fps", "Items completed per second, last seconds",
                                     value=s["fps"])
        yield core.GaugeMetricFamily("edgepilot_pipeline_queue_depth", "Items waiting for inference",
                                     value=s["queue_depth"])
        counters = dict(s["counters"])
        swaps, failed = counters.pop("model_swaps", 0), counters.pop("model_swap_failures", 0)
        items = core.CounterMetricFamily("edgepilot_pipeline_items", "Pipeline items by outcome", labels=["what"])
        for what, n in sorted(counters.items()):
            items.add_metric([what], n)
        yield items
        yield core.CounterMetricFamily("edgepilot_pipeline_model_swaps", "Models swapped in without a restart",
                                       value=swaps)
        yield core.CounterMetricFamily("edgepilot_pipeline_model_swap_failures",
                                       "Changed models refused (the previous one kept serving)", value=failed)
