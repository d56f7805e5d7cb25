"""Prometheus text exposition read into counters, gauges and histograms; deltas between scrapes; bucket quantiles."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgepilot.optional import require

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: a hashable series identity


class NotExposition(ValueError):
    """The text is not Prometheus text exposition format; the message says where it broke."""


@dataclass(frozen=True)
class Counter:
    value: float
    created: float | None = None  # prometheus_client's `_created`: changes when the process restarted


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets `(upper bound, observations <= bound)` ascending, the last one +Inf."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float
    created: float | None = None

    def minus(self, earlier: Histogram | None) -> Histogram:
        """The observations since `earlier`; all of them when the histogram was reset (a restarted server) or the
        bucket layout changed, as Prometheus' rate() treats a counter that went down."""
        if earlier is None or _was_reset(earlier, self):
            return self
        return Histogram(tuple((le, n - m) for (le, n), (_, m) in zip(self.buckets, earlier.buckets)),
                         self.count - earlier.count, self.sum - earlier.sum, self.created)

    def plus(self, other: Histogram) -> Histogram:
        """Two series of the same layout merged (e.g. one model's requests over every protocol)."""
        if [le for le, _ in self.buckets] != [le for le, _ in other.buckets]:
            raise NotExposition("histograms with different buckets cannot be merged")
        return Histogram(tuple((le, n + m) for (le, n), (_, m) in zip(self.buckets, other.buckets)),
                         self.count + other.count, self.sum + other.sum, None)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """An estimate of the q-quantile, interpolated linearly inside its bucket as Prometheus'
        histogram_quantile() does: exact only up to the bucket bounds. None without observations."""
        if not self.buckets or self.count <= 0 or not 0 <= q <= 1:
            return None
        rank = q * self.buckets[-1][1]
        lower, below = 0.0, 0.0
        for i, (le, n) in enumerate(self.buckets):
            if n >= rank and n > below:
                if math.isinf(le):  # in the overflow bucket: the highest finite bound is all that is known
                    return self.buckets[i - 1][0] if i > 0 else None
                if i == 0 and le <= 0:
                    return le
                return lower + (le - lower) * (rank - below) / (n - below)
            lower, below = le, n
        return None


def _was_reset(earlier: Histogram, later: Histogram) -> bool:
    if earlier.created is not None and later.created is not None and earlier.created != later.created:
        return True
    if [le for le, _ in earlier.buckets] != [le for le, _ in later.buckets]:
        return True
    return later.count < earlier.count or any(n < m for (_, n), (_, m) in zip(later.buckets, earlier.buckets))


def counter_delta(earlier: Counter | None, later: Counter) -> float | None:
    """The increase since `earlier`: None without one; the whole value after a reset (the process restarted)."""
    if earlier is None:
        return None
    restarted = earlier.created is not None and later.created is not None and earlier.created != later.created
    return later.value if restarted or later.value < earlier.value else later.value - earlier.value


@dataclass(frozen=True)
class Gauge:
    name: str
    labels: Labels
    value: float
    help: str = ""


@dataclass
class Exposition:
    """One scrape: series by family name and labels (histogram and counter labels exclude `le`)."""

    counters: dict[str, dict[Labels, Counter]] = field(default_factory=dict)
    histograms: dict[str, dict[Labels, Histogram]] = field(default_factory=dict)
    gauges: dict[str, list[Gauge]] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)

    @property
    def families(self) -> int:
        return len(self.counters) + len(self.histograms) + len(self.gauges)


def _labels(d: dict[str, str], drop: Iterable[str] = ()) -> Labels:
    return tuple(sorted((k, v) for k, v in d.items() if k not in drop))


def _bound(text: str) -> float:
    return math.inf if text in ("+Inf", "Inf") else float(text)


def parse(text: str) -> Exposition:
    """Parse text exposition (version 0.0.4) with prometheus_client's parser: escaped label values, comments,
    `_created` samples. Raises NotExposition for anything else (an HTML page, JSON, a truncated body)."""
    parser = require("prometheus_client.parser", "serve")
    out = Exposition()
    try:
        families = list(parser.text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as e:
        raise NotExposition(str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from e
    created: dict[tuple[str, Labels], float] = {}
    for fam in families:  # `_created` comes as a gauge family of its own, possibly after its counter
        if fam.name.endswith("_created"):
            for s in fam.samples:
                created[(fam.name.removesuffix("_created"), _labels(s.labels))] = s.value
    for fam in families:
        out.help[fam.name] = fam.documentation
        if fam.name.endswith("_created"):
            continue
        if fam.type == "counter":
            series = out.counters.setdefault(fam.name, {})
            for s in fam.samples:
                if s.name == fam.name + "_total" or s.name == fam.name:
                    key = _labels(s.labels)
                    series[key] = Counter(s.value, created.get((fam.name, key)))
        elif fam.type == "histogram":
            _histograms(fam, out.histograms.setdefault(fam.name, {}), created)
        elif fam.type in ("gauge", "unknown", "untyped"):
            out.gauges[fam.name] = [Gauge(fam.name, _labels(s.labels), s.value, fam.documentation)
                                    for s in fam.samples if s.name == fam.name]
        # summaries, info and state sets: nothing of ours exports them
    return out


def _histograms(fam, series: dict[Labels, Histogram], created: dict) -> None:
    buckets: dict[Labels, list[tuple[float, float]]] = {}
    count: dict[Labels, float] = {}
    total: dict[Labels, float] = {}
    for s in fam.samples:
        if s.name == fam.name + "_bucket":
            try:
                le = _bound(s.labels["le"])
            except (KeyError, ValueError) as e:
                raise NotExposition(f"{fam.name}: a bucket without a numeric `le` label") from e
            buckets.setdefault(_labels(s.labels, ("le",)), []).append((le, s.value))
        elif s.name == fam.name + "_count":
            count[_labels(s.labels)] = s.value
        elif s.name == fam.name + "_sum":
            total[_labels(s.labels)] = s.value
    for key, bs in buckets.items():
        bs.sort()
        if not bs or not math.isinf(bs[-1][0]):
            raise NotExposition(f"{fam.name}: histogram without a +Inf bucket")
        series[key] = Histogram(tuple(bs), count.get(key, bs[-1][1]), total.get(key, math.nan),
                                created.get((fam.name, key)))
