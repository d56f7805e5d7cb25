"""The MQTT sink: events (and optionally results) published through the durable SQLite outbox."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgepilot.runtime.item import Item
from edgepilot.runtime.mqtt import MqttConfig
from edgepilot.runtime.sinks.base import Sink, SinkConfigBase


class MqttSinkConfig(SinkConfigBase):
    type: Literal["mqtt"]
    mqtt: MqttConfig = MqttConfig()
    topic: str = Field("edgepilot/{pipeline}", description="prefix: events go to <topic>/events, results (when "
                                                           "enabled) to <topic>/<source>/results")
    results: bool = Field(False, description="also publish every result (events are always published)")
    outbox: str = Field("outbox.db", description="SQLite file holding messages until the broker acknowledges them")
    qos: Literal[0, 1] = 1
    drain_s: float = Field(5.0, ge=0, description="at shutdown, wait this long for pending messages to be "
                                                  "acknowledged; the rest stay in the outbox for the next run")


class MqttSink(Sink):
    """Events (and optionally results) through the SQLite outbox: accepted means on disk, delivered in order with
    QoS 1 once the broker is reachable. Every payload carries its event_id so subscribers can drop duplicates."""

    name = "mqtt"

    @classmethod
    def open(cls, cfg: MqttSinkConfig, *, pipeline: str, workdir: Path, fps_of: Any) -> MqttSink:
        return cls(cfg, pipeline)

    def __init__(self, cfg: MqttSinkConfig, pipeline: str) -> None:
        from edgepilot.runtime.outbox import Outbox

        self.cfg = cfg
        self.prefix = cfg.topic.format(pipeline=pipeline).rstrip("/")
        self.outbox = Outbox(cfg.outbox, cfg.mqtt, qos=cfg.qos)

    def write(self, item: Item) -> None:
        rows = []
        for e in item.events:
            body = e.to_json()
            for topic in (f"{self.prefix}/events", *e.mqtt_topics):
                # one id per (event, topic) so a subscriber to both sees each once, and retries stay idempotent
                eid = e.event_id if topic == f"{self.prefix}/events" else _sub_id(e.event_id, topic)
                rows.append((topic, body, eid))
        if self.cfg.results and item.result is not None:
            d = item.to_dict()
            d["event_id"] = _sub_id(f"{item.source}/{item.seq}/{item.ts}", "results")
            rows.append((f"{self.prefix}/{item.source}/results", json.dumps(d), d["event_id"]))
        if rows:
            self.outbox.put_many(rows)  # one transaction, one fsync per item

    def close(self) -> None:
        self.outbox.flush(self.cfg.drain_s)  # what is still pending is reported by undelivered()
        self.outbox.close()

    def undelivered(self) -> tuple[int, str]:
        """Messages accepted but not acknowledged by the broker, and where they wait for the next run."""
        return self.outbox.pending(), f"the MQTT outbox {self.cfg.outbox}"


def _sub_id(base: str, topic: str) -> str:
    return hashlib.sha1(f"{base}|{topic}".encode()).hexdigest()[:32]
