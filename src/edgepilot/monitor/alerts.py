"""Threshold alerts with hysteresis and a minimum duration, delivered through pluggable sinks that work offline."""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from edgepilot.errors import ConfigError
from edgepilot.monitor.advisor import Thresholds
from edgepilot.monitor.readings import Reading, Sample

log = logging.getLogger(__name__)


class AlertRule(BaseModel, extra="forbid"):
    """Fires when `metric` stays above `above` (or below `below`) for `for_s` seconds; clears only once it is back
    past the threshold by `hysteresis` for `for_s` seconds, so a value hovering at the line does not flap."""

    name: str
    metric: str
    labels: dict[str, str] = Field(default_factory=dict)  # match only series with these labels
    key: str | None = None  # or exactly one series, e.g. "cpu_percent" (overall, not per core)
    above: float | None = None
    below: float | None = None
    hysteresis: float = Field(0.0, ge=0)
    for_s: float = Field(0.0, ge=0)
    severity: str = "warning"

    @model_validator(mode="after")
    def _one_direction(self) -> AlertRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of `above` and `below`")
        return self

    def matches(self, r: Reading) -> bool:
        if self.key is not None:
            return r.key == self.key
        return r.metric == self.metric and all(r.label_dict.get(k) == v for k, v in self.labels.items())

    def breached(self, v: float) -> bool:
        return v > self.above if self.above is not None else v < self.below  # type: ignore[operator]

    def cleared(self, v: float) -> bool:
        if self.above is not None:
            return v < self.above - self.hysteresis
        return v > self.below + self.hysteresis  # type: ignore[operator]


@dataclass(frozen=True)
class Alert:
    rule: str
    key: str
    state: str  # "firing" or "resolved"
    severity: str
    value: float
    threshold: float
    unit: str
    since: float  # when the condition started (epoch seconds)
    ts: float
    message: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@runtime_checkable
class AlertSink(Protocol):
    """Where alerts go. `send` must not raise for a delivery failure: keep the alert and retry (offline-first)."""

    name: str

    def send(self, alert: Alert) -> None: ...


class LogSink:
    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("edgepilot.alerts")

    def send(self, alert: Alert) -> None:
        self.log.log(logging.WARNING if alert.state == "firing" else logging.INFO, "%s", alert.message)


class JsonlSink:
    """Appends one JSON object per alert; a local file works with no network at all."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def send(self, alert: Alert) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(alert.to_json() + "\n")


class WebhookSink:
    """POSTs each alert as JSON. Undelivered alerts wait in a spool file and go out, in order, on the next send
    or `flush()` once the endpoint answers again — so alerts raised while offline are not lost."""

    name = "webhook"

    def __init__(self, url: str, spool: str | Path, *, timeout_s: float = 5.0,
                 headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook URL must be http(s): {url!r}")
        self.url, self.timeout_s = url, timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.spool = Path(spool)
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _post(self, body: str) -> None:
        req = urllib.request.Request(self.url, data=body.encode(), headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (the user's own endpoint)
            if resp.status >= 300:
                raise urllib.error.HTTPError(self.url, resp.status, "unexpected status", resp.headers, None)

    def send(self, alert: Alert) -> int:
        """Spools the alert (anything with `to_json()`), then delivers what it can; returns how many still wait."""
        with self._lock:
            self._keep_locked(alert)
            return self._flush_locked()

    def keep(self, alert: Alert) -> bool:
        """Spools the alert without delivering it (`flush` does); raises OSError when the spool cannot take it."""
        with self._lock:
            self._keep_locked(alert)
        return True

    def _keep_locked(self, alert: Alert) -> None:
        with self.spool.open("a", encoding="utf-8") as f:
            f.write(alert.to_json() + "\n")

    def flush(self) -> int:
        """Try to deliver everything spooled; returns how many are still waiting."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        try:
            pending = [ln for ln in self.spool.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except FileNotFoundError:
            return 0
        sent = 0
        for body in pending:
            try:
                self._post(body)
            except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as e:  # or not HTTP
                log.info("webhook %s unreachable (%s); %d alert(s) kept in %s", self.url, e, len(pending) - sent,
                         self.spool)
                break
            sent += 1
        rest = pending[sent:]
        if sent:  # replaced whole: a full disk leaves the old spool (the sent again: at least once), never a cut one
            tmp = self.spool.with_name(self.spool.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in rest), encoding="utf-8")
            os.replace(tmp, self.spool)
        return len(rest)


class MqttAlertSink:
    """Monitor alerts over MQTT, offline-first: each alert goes into an `edgepilot.runtime.outbox.Outbox` (so it
    survives broker outages and restarts) as its JSON plus an `event_id` derived from rule, series, state and time,
    so a re-sent or re-raised alert is recognisably the same one. The topic may use {rule}, {state} and {severity}."""

    name = "mqtt"

    def __init__(self, outbox, topic: str = "edgepilot/alerts/{state}") -> None:
        self.outbox, self.topic = outbox, topic
        self.failed = 0

    @staticmethod
    def event_id(alert: Alert) -> str:
        return hashlib.sha256(f"{alert.rule}|{alert.key}|{alert.state}|{alert.ts!r}".encode()).hexdigest()[:32]

    def send(self, alert: Alert) -> None:
        eid = self.event_id(alert)
        body = json.dumps({**asdict(alert), "event_id": eid}, ensure_ascii=False)
        try:
            self.outbox.put(self.topic.format(rule=alert.rule, state=alert.state, severity=alert.severity), body,
                            event_id=eid)
        except Exception as e:  # an alert sink must never stop monitoring
            self.failed += 1
            log.error("alert not stored in the MQTT outbox (%s): %s", e, alert.message)


@dataclass
class _State:
    pending_since: float | None = None  # condition met, waiting out for_s
    firing_since: float | None = None
    clear_since: float | None = None  # back past the hysteresis band, waiting out for_s


class AlertEngine:
    """Evaluates rules against each sample, per series, and sends state changes to every sink."""

    def __init__(self, rules: list[AlertRule], sinks: list[AlertSink] | None = None) -> None:
        self.rules = rules
        self.sinks = sinks if sinks is not None else [LogSink()]
        self._state: dict[tuple[str, str], _State] = {}
        self.history: list[Alert] = []

    @property
    def firing(self) -> list[tuple[str, str]]:
        return [k for k, s in self._state.items() if s.firing_since is not None]

    def evaluate(self, sample: Sample) -> list[Alert]:
        out = []
        for rule in self.rules:
            for r in sample.readings:
                if rule.matches(r):
                    a = self._step(rule, r, sample.ts)
                    if a is not None:
                        out.append(a)
        for a in out:
            self.history.append(a)
            for sink in self.sinks:
                try:
                    sink.send(a)
                except Exception as e:  # a broken sink must not stop monitoring or the other sinks
                    log.warning("alert sink %s failed: %s", getattr(sink, "name", sink), e)
        return out

    def _step(self, rule: AlertRule, r: Reading, ts: float) -> Alert | None:
        st = self._state.setdefault((rule.name, r.key), _State())
        limit = rule.above if rule.above is not None else rule.below
        word = "above" if rule.above is not None else "below"
        if st.firing_since is None:
            if not rule.breached(r.value):
                st.pending_since = None
                return None
            st.pending_since = st.pending_since if st.pending_since is not None else ts
            if ts - st.pending_since < rule.for_s:
                return None
            st.firing_since, st.clear_since = st.pending_since, None
            return Alert(rule.name, r.key, "firing", rule.severity, r.value, limit, r.unit, st.firing_since, ts,
                         f"[{rule.severity}] {rule.name}: {r.key} = {r.value:.2f} {r.unit}, {word} {limit:g} "
                         f"for {ts - st.firing_since:.0f} s")
        if not rule.cleared(r.value):
            st.clear_since = None
            return None
        st.clear_since = st.clear_since if st.clear_since is not None else ts
        if ts - st.clear_since < rule.for_s:
            return None
        since = st.firing_since
        st.firing_since = st.pending_since = st.clear_since = None
        return Alert(rule.name, r.key, "resolved", rule.severity, r.value, limit, r.unit, since, ts,
                     f"[resolved] {rule.name}: {r.key} = {r.value:.2f} {r.unit}, back within {limit:g} "
                     f"(was over for {ts - since:.0f} s)")


def default_rules(t: Thresholds, *, for_s: float = 10.0, hysteresis_frac: float = 0.05) -> list[AlertRule]:
    """The advisor's thresholds as alert rules: sustained for `for_s`, clearing 5 % below the line."""
    pairs = [("cpu-high", "cpu_percent", t.cpu_percent), ("memory-high", "memory_percent", t.memory_percent),
             ("temperature-high", "temperature_celsius", t.temperature_celsius),
             ("inference-slow", "inference_latency_ms", t.inference_latency_ms),
             ("power-high", "power_watts", t.power_watts)]
    rules = [AlertRule(name=n, metric=m, above=v, hysteresis=abs(v) * hysteresis_frac, for_s=for_s)
             for n, m, v in pairs]
    rules[0].key = "cpu_percent"  # overall CPU only: one busy core on a many-core board is not "CPU high"
    return rules


class _RulesFile(BaseModel, extra="forbid"):
    rules: list[AlertRule]


def load_rules(path: str | Path) -> list[AlertRule]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read alert rules {p}: {e}") from e
    try:
        return _RulesFile.model_validate(data).rules
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{p}: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
