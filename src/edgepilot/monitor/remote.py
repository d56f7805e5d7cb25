"""A running server's or runtime's /metrics read over HTTP and turned into the monitor's readings (another process)."""
from __future__ import annotations

import ipaddress
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict

from edgepilot.errors import ConfigError, EdgepilotError
from edgepilot.monitor.exposition import Counter, Exposition, NotExposition, counter_delta, parse
from edgepilot.monitor.readings import Collector, Reading, SourceStatus, SourceUnavailable, reading

_MAX_BODY = 16 << 20  # a /metrics page of a few hundred series is ~50 kB; more than this is not one of ours
_START_HINT = "is `edgepilot serve` (or `edgepilot run` with `server:` in its YAML) running at that address?"
_PREFIX = "edgepilot_"
_UNIT_HELP = re.compile(r"^(?P<metric>\S+) \((?P<unit>[^()]*)\)$")  # the system gauges' HELP: "cpu_percent (%)"
ESTIMATE = "histogram estimate"


class EndpointError(EdgepilotError):
    """A metrics endpoint could not be reached, or answered something other than Prometheus text."""

    exit_code = 3
    http_status = 502


def metrics_url(url: str) -> str:
    """`http://host:port` → `http://host:port/metrics`; a URL with a path is taken as it is."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http(s) URL", hint="pass e.g. --url http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as e:
        raise ConfigError(f"{url!r}: {e}", hint="pass e.g. --url http://127.0.0.1:8000") from e
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch(url: str, *, token: str | None = None, timeout_s: float = 5.0) -> str:
    """The body of GET `url` as text; EndpointError, in one line with a hint, for every way that can fail."""
    headers = {"Accept": "text/plain;version=0.0.4", "User-Agent": "edgepilot-monitor"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    host = urllib.parse.urlsplit(url).hostname or ""
    # a proxy from the environment must not intercept a server on this machine
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if _is_loopback(host) else []))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            body = resp.read(_MAX_BODY + 1)
            charset = resp.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as e:
        hint = {401: "the endpoint needs a bearer token: pass --token", 403: "the token was refused: check --token",
                404: f"no metrics at that path (edgepilot serves them at /metrics); {_START_HINT}"}.get(e.code,
                                                                                                      _START_HINT)
        raise EndpointError(f"{url} answered HTTP {e.code} {e.reason}", hint=hint) from e
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise EndpointError(f"cannot reach {url}: connection refused", hint=_START_HINT) from e
        if isinstance(reason, TimeoutError):
            raise EndpointError(f"{url} did not answer within {timeout_s:g} s",
                                hint="check the address; raise --timeout for a busy device") from e
        raise EndpointError(f"cannot reach {url}: {getattr(reason, 'strerror', None) or reason}",
                            hint="check the host name and the network") from e
    except TimeoutError as e:
        raise EndpointError(f"{url} did not answer within {timeout_s:g} s",
                            hint="check the address; raise --timeout for a busy device") from e
    except (OSError, ValueError) as e:  # a reset connection, a bad status line, an unusable TLS setup
        raise EndpointError(f"cannot read {url}: {str(e) or type(e).__name__}", hint=_START_HINT) from e
    if len(body) > _MAX_BODY:
        raise EndpointError(f"{url} answered more than {_MAX_BODY >> 20} MiB", hint="is that a metrics endpoint?")
    try:
        return body.decode(charset)
    except (UnicodeDecodeError, LookupError) as e:
        raise EndpointError(f"{url} did not answer text ({e})", hint=_START_HINT) from e


def scrape(url: str, *, token: str | None = None, timeout_s: float = 5.0) -> Exposition:
    """Fetch and parse one /metrics page (`url` as `metrics_url` reads it); EndpointError when it is not
    Prometheus text."""
    url = metrics_url(url)
    text = fetch(url, token=token, timeout_s=timeout_s)
    try:
        exp = parse(text)
    except NotExposition as e:
        raise EndpointError(f"{url} did not answer Prometheus text ({e})",
                            hint="point --url at an edgepilot server or runtime, e.g. http://HOST:8000") from e
    if exp.families == 0:
        raise EndpointError(f"{url} answered no metrics", hint="point --url at an edgepilot server or runtime")
    return exp


def _model_key(labels) -> tuple[tuple[str, str], ...]:
    d = dict(labels)
    return tuple((k, d[k]) for k in ("model", "version") if d.get(k))


class RemoteReader:
    """Turns successive scrapes into readings: totals as the server counts them, rates from counter deltas (a
    restarted server's counters start again from zero), latency percentiles estimated from histogram bucket deltas."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._prev: tuple[float, Exposition] | None = None

    def readings(self, exp: Exposition, now: float | None = None) -> list[Reading]:
        now = time.monotonic() if now is None else now
        prev = self._prev
        self._prev = (now, exp)
        dt = now - prev[0] if prev is not None and now > prev[0] else None
        earlier = prev[1] if dt is not None else None
        out = self._requests(exp, earlier, dt)
        out += self._histograms(exp, earlier)
        out += self._pipeline(exp, earlier, dt)
        out += self._system(exp)
        return out

    def _r(self, metric: str, value: float, unit: str, labels, estimate: bool = False) -> Reading:
        return reading(metric, value, unit, f"{self.source} ({ESTIMATE})" if estimate else self.source, **dict(labels))

    def _deltas(self, name: str, exp: Exposition, earlier: Exposition | None) -> dict:
        """series -> increase since `earlier` (a series new since then counts from zero); {} without `earlier`."""
        if earlier is None:
            return {}
        before = earlier.counters.get(name, {})
        return {k: counter_delta(before.get(k, Counter(0.0, c.created)), c)
                for k, c in exp.counters.get(name, {}).items()}

    def _requests(self, exp: Exposition, earlier: Exposition | None, dt: float | None) -> list[Reading]:
        name = _PREFIX + "serve_requests"
        deltas = self._deltas(name, exp, earlier)
        total, errors, d_total, d_errors = (defaultdict(float) for _ in range(4))
        for labels, c in exp.counters.get(name, {}).items():
            code = dict(labels).get("code", "")
            key, failed = _model_key(labels), code.isdigit() and int(code) >= 400
            total[key] += c.value
            errors[key] += c.value if failed else 0.0
            if labels in deltas:
                d_total[key] += deltas[labels]
                d_errors[key] += deltas[labels] if failed else 0.0
        out = []
        for key in sorted(total):
            out += [self._r("inference_requests_total", total[key], "count", key),
                    self._r("inference_request_errors_total", errors[key], "count", key)]
            if dt is not None and key in d_total:
                out += [self._r("inference_requests_per_s", d_total[key] / dt, "1/s", key),
                        self._r("inference_request_errors_per_s", d_errors[key] / dt, "1/s", key)]
        return out

    def _merged(self, name: str, exp: Exposition, earlier: Exposition | None) -> tuple[dict, dict]:
        """Per model/version (other labels, e.g. protocol, merged): since start, and since `earlier` (or {})."""
        since_start: dict = {}
        window: dict = {}
        before = earlier.histograms.get(name, {}) if earlier is not None else None
        for labels, h in exp.histograms.get(name, {}).items():
            key = _model_key(labels)
            since_start[key] = since_start[key].plus(h) if key in since_start else h
            if before is not None:
                d = h.minus(before.get(labels))
                window[key] = window[key].plus(d) if key in window else d
        return since_start, window

    def _histograms(self, exp: Exposition, earlier: Exposition | None) -> list[Reading]:
        out = []
        # (family, reading stem, unit, scale, with percentiles)
        for fam, stem, unit, scale, pct in (("serve_request_seconds", "inference_latency", "ms", 1e3, True),
                                            ("serve_queue_seconds", "inference_queue", "ms", 1e3, False),
                                            ("serve_compute_seconds", "inference_compute", "ms", 1e3, False),
                                            ("serve_batch_size", "inference_batch", "count", 1.0, False)):
            since_start, window = self._merged(_PREFIX + fam, exp, earlier)
            suffix = "_ms" if unit == "ms" else "_size"
            for key in sorted(since_start):
                for h, tail in ((window.get(key), ""), (since_start[key], "_since_start")):
                    if h is None or h.count <= 0 or h.mean is None:
                        continue  # no observation in this window: no mean, no percentile to show
                    out.append(self._r(f"{stem}{suffix}{tail}", h.mean * scale, unit, key))
                    if pct:
                        for q in (50, 95):
                            v = h.quantile(q / 100)
                            if v is not None:
                                out.append(self._r(f"{stem}_p{q}{suffix}{tail}", v * scale, unit, key, estimate=True))
        return out

    def _pipeline(self, exp: Exposition, earlier: Exposition | None, dt: float | None) -> list[Reading]:
        out = []
        for fam, metric, unit in (("pipeline_fps", "inference_pipeline_fps", "1/s"),
                                  ("pipeline_queue_depth", "inference_pipeline_queue_depth", "count")):
            for g in exp.gauges.get(_PREFIX + fam, []):
                out.append(self._r(metric, g.value, unit, g.labels))
        name = _PREFIX + "pipeline_items"
        deltas = self._deltas(name, exp, earlier)
        for labels, c in sorted(exp.counters.get(name, {}).items()):
            out.append(self._r("inference_pipeline_items_total", c.value, "count", labels))
            if dt is not None and deltas.get(labels) is not None:
                out.append(self._r("inference_pipeline_items_per_s", deltas[labels] / dt, "1/s", labels))
        return out

    def _system(self, exp: Exposition) -> list[Reading]:
        """The server's own monitor gauges (edgepilot.monitor.prometheus): metric and unit from the HELP text."""
        out = []
        for name, gauges in sorted(exp.gauges.items()):
            m = _UNIT_HELP.match(exp.help.get(name, ""))
            if not name.startswith(_PREFIX) or m is None or name != _PREFIX + m["metric"]:
                continue
            for g in gauges:
                labels = {k: v for k, v in g.labels if k != "source" and v != ""}  # "" fills a label a reading lacks
                src = dict(g.labels).get("source", "")
                out.append(reading(m["metric"], g.value, m["unit"], f"{self.source} {src}".strip(), **labels))
        return out

    def statuses(self, exp: Exposition, prefix: str) -> list[SourceStatus]:
        """The server's monitoring sources, as it reports them (available or not, and why)."""
        details = {dict(g.labels).get("source", ""): dict(g.labels).get("detail", "")
                   for g in exp.gauges.get(_PREFIX + "source_info", [])}
        return [SourceStatus(f"{prefix}{name}", g.value > 0, details.get(name, ""))
                for g in exp.gauges.get(_PREFIX + "source_available", []) if (name := dict(g.labels).get("source"))]


class RemoteCollector(Collector):
    """The `monitor --url` source: each sample scrapes the endpoint once; a failed scrape marks it unreachable,
    and the next sample tries again."""

    name = "remote"
    panels = ("inference", "cpu", "memory", "gpu", "temperature", "power")
    retry_s = 0.0  # the server may come back at any moment; one scrape per sample is cheap

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 5.0) -> None:
        self.url = metrics_url(url)
        self.token, self.timeout_s = token, timeout_s
        self.reader = RemoteReader(self.url.split("://", 1)[1])  # the source column: host:port/metrics
        self._statuses: list[SourceStatus] = []

    def _scrape(self) -> Exposition:
        try:
            return scrape(self.url, token=self.token, timeout_s=self.timeout_s)
        except EndpointError as e:
            self._statuses = []  # the server's sources are unknown while it cannot be read
            raise SourceUnavailable(f"unreachable: {e}") from e

    def probe(self) -> tuple[bool, str]:
        try:
            exp = self._scrape()
        except SourceUnavailable as e:
            return False, str(e)
        self._statuses = self.reader.statuses(exp, "remote ")
        return True, f"{self.url}: {exp.families} metric families"

    def collect(self) -> list[Reading]:
        exp = self._scrape()
        self._statuses = self.reader.statuses(exp, "remote ")
        return self.reader.readings(exp)

    def extra_statuses(self) -> list[SourceStatus]:
        return list(self._statuses)
