"""Prometheus gauges for every collector's readings: a registry the server's /metrics can mount."""
from __future__ import annotations

import re
from collections import defaultdict

from edgepilot.monitor.readings import Sample
from edgepilot.monitor.sampler import Monitor
from edgepilot.optional import require

_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(metric: str, prefix: str) -> str:
    return prefix + _BAD.sub("_", metric)


class MonitorCollector:
    """A prometheus_client collector: one gauge family per metric, labelled by the reading's labels and source.

    A scrape reuses the monitor's latest sample when it is younger than `max_age_s` (the monitor loop is running),
    and samples once otherwise, so /metrics never serves values older than that."""

    def __init__(self, monitor: Monitor, *, prefix: str = "edgepilot_", max_age_s: float = 2.0) -> None:
        self.monitor, self.prefix, self.max_age_s = monitor, prefix, max_age_s

    def _sample(self) -> Sample:
        return self.monitor.fresh(self.max_age_s)

    def describe(self):
        return []  # the families depend on the hardware found; describing them would force a sample at register

    def collect(self):
        core = require("prometheus_client.core", "serve")
        sample = self._sample()
        by_metric = defaultdict(list)
        for r in sample.readings:
            by_metric[r.metric].append(r)
        for metric, readings in sorted(by_metric.items()):
            names = sorted({k for r in readings for k, _ in r.labels}) + ["source"]
            unit = readings[0].unit
            fam = core.GaugeMetricFamily(_metric_name(metric, self.prefix), f"{metric} ({unit})", labels=names)
            for r in readings:
                d = r.label_dict
                fam.add_metric([d.get(n, "") for n in names[:-1]] + [r.source], r.value)
            yield fam
        up = core.GaugeMetricFamily(self.prefix + "source_available",
                                    "1 when a monitoring source could be read, 0 when not (see source_info)",
                                    labels=["source"])
        info = core.GaugeMetricFamily(self.prefix + "source_info", "What a source reads, or why it cannot",
                                      labels=["source", "detail"])
        for s in sample.sources:
            up.add_metric([s.name], 1.0 if s.available else 0.0)
            info.add_metric([s.name, s.detail[:200]], 1.0)
        yield up
        yield info


def build_registry(monitor: Monitor | None = None, **kwargs):
    """A fresh CollectorRegistry holding the monitor's gauges; mount it with prometheus_client.make_asgi_app(...)."""
    client = require("prometheus_client", "serve")
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(monitor or Monitor(), **kwargs))
    return registry
