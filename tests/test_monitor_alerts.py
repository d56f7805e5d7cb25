"""Alert rules: minimum duration, hysteresis, sinks (log, JSONL, a webhook on loopback) and offline spooling."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from edgepilot.errors import ConfigError
from edgepilot.monitor.advisor import Thresholds
from edgepilot.monitor.alerts import (
    AlertEngine,
    AlertRule,
    AlertSink,
    JsonlSink,
    LogSink,
    WebhookSink,
    default_rules,
    load_rules,
)
from edgepilot.monitor.readings import Sample, reading


def feed(engine: AlertEngine, values: list[float], metric: str = "temperature_celsius", step: float = 1.0,
         **labels) -> list:
    out = []
    for i, v in enumerate(values):
        out += engine.evaluate(Sample(1000.0 + i * step, [reading(metric, v, "°C", "test", **labels)]))
    return out


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.got = []

    def send(self, alert) -> None:
        self.got.append(alert)


def test_minimum_duration_and_hysteresis():
    sink = Collect()
    rule = AlertRule(name="hot", metric="temperature_celsius", above=70, hysteresis=5, for_s=3)
    engine = AlertEngine([rule], [sink])
    # a 2 s spike is shorter than for_s: nothing
    assert feed(engine, [60, 75, 76, 60, 60]) == []
    engine = AlertEngine([rule], [sink])
    # over 70 from t=1 on: fires at t=4 (3 s later); 68 is inside the hysteresis band (> 65): still firing;
    # below 65 from t=8: resolves at t=11
    alerts = feed(engine, [60, 72, 73, 74, 75, 68, 71, 68, 64, 63, 62, 61, 60])
    assert [(a.state, a.ts - 1000) for a in alerts] == [("firing", 4), ("resolved", 11)]
    assert alerts[0].since == 1001 and alerts[0].threshold == 70 and "above 70" in alerts[0].message
    assert sink.got == alerts


def test_hovering_at_the_line_does_not_flap():
    engine = AlertEngine([AlertRule(name="hot", metric="temperature_celsius", above=70, hysteresis=3)], [Collect()])
    alerts = feed(engine, [71, 69.5, 70.5, 69, 71, 68, 66])
    assert [a.state for a in alerts] == ["firing", "resolved"]  # clears only below 67


def test_below_rules_and_series_are_independent():
    engine = AlertEngine([AlertRule(name="low-battery", metric="battery_percent", below=20, hysteresis=5)],
                         [Collect()])
    out = engine.evaluate(Sample(1, [reading("battery_percent", 15, "%", "t", bat="a"),
                                     reading("battery_percent", 50, "%", "t", bat="b")]))
    assert [(a.key, a.state) for a in out] == [("battery_percent{bat=a}", "firing")]
    assert engine.firing == [("low-battery", "battery_percent{bat=a}")]


def test_default_rules_watch_total_cpu_only():
    rules = default_rules(Thresholds(), for_s=0)
    engine = AlertEngine(rules, [Collect()])
    out = engine.evaluate(Sample(1, [reading("cpu_percent", 50, "%", "t"), reading("cpu_percent", 100, "%", "t",
                                                                                      core=0)]))
    assert out == []
    out = engine.evaluate(Sample(2, [reading("cpu_percent", 95, "%", "t"), reading("power_watts", 12, "W", "t",
                                                                                      rail="VDD_IN")]))
    assert {a.rule for a in out} == {"cpu-high", "power-high"}


def test_rules_file(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("rules:\n  - {name: hot, metric: temperature_celsius, above: 75, for_s: 30, severity: critical}\n")
    (rule,) = load_rules(f)
    assert rule.above == 75 and rule.for_s == 30 and rule.severity == "critical"
    f.write_text("rules:\n  - {name: bad, metric: x}\n")
    with pytest.raises(ConfigError, match="exactly one of"):
        load_rules(f)
    f.write_text("rules:\n  - {name: bad, metric: x, above: 1, colour: red}\n")
    with pytest.raises(ConfigError, match="colour"):
        load_rules(f)


def test_log_and_jsonl_sinks(tmp_path, caplog):
    path = tmp_path / "alerts.jsonl"
    engine = AlertEngine([AlertRule(name="hot", metric="temperature_celsius", above=70)], [LogSink(), JsonlSink(path)])
    with caplog.at_level(logging.INFO, logger="edgepilot.alerts"):
        feed(engine, [80, 60])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["state"] for x in lines] == ["firing", "resolved"] and lines[0]["value"] == 80
    assert "hot" in caplog.text and isinstance(LogSink(), AlertSink) and isinstance(JsonlSink(path), AlertSink)


def test_a_broken_sink_does_not_stop_the_others(tmp_path):
    class Broken:
        name = "broken"

        def send(self, alert):
            raise RuntimeError("disk full")

    good = Collect()
    engine = AlertEngine([AlertRule(name="hot", metric="temperature_celsius", above=70)], [Broken(), good])
    feed(engine, [80])
    assert len(good.got) == 1


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webhook_spools_while_offline_and_delivers_in_order(tmp_path):
    port = _free_port()
    sink = WebhookSink(f"http://127.0.0.1:{port}/alerts", tmp_path / "spool.jsonl", timeout_s=2)
    engine = AlertEngine([AlertRule(name="hot", metric="temperature_celsius", above=70)], [sink])
    feed(engine, [80, 60, 90])  # nobody listens yet: three alerts wait in the spool
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 3
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", port), _Hook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        assert sink.flush() == 0
        assert [(a["state"], a["value"]) for a in _Hook.received] == [("firing", 80), ("resolved", 60),
                                                                      ("firing", 90)]
        assert (tmp_path / "spool.jsonl").read_text() == ""
        feed(engine, [50])  # online: delivered at once
        assert _Hook.received[-1]["state"] == "resolved"
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_url_is_checked(tmp_path):
    with pytest.raises(ConfigError):
        WebhookSink("ftp://example", tmp_path / "s.jsonl")
