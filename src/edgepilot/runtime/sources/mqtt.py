"""MQTT topics as a source: each message carries JSON values, an image, or both."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgepilot.errors import UnavailableError
from edgepilot.runtime.item import Item
from edgepilot.runtime.mqtt import MqttConfig, make_client
from edgepilot.runtime.sources.base import Source, _decode_image, _SourceBase

log = logging.getLogger(__name__)

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF")  # JPEG, PNG, BMP, WebP


class MqttSourceConfig(_SourceBase):
    type: Literal["mqtt"] = "mqtt"
    topic: str  # wildcards allowed
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    payload: Literal["auto", "json", "image"] = "auto"  # auto: JPEG/PNG/BMP/WebP bytes are images, the rest JSON
    qos: Literal[0, 1, 2] = 1
    queue: int = Field(100, ge=1)  # messages held for a slow consumer; the oldest are dropped beyond it


def _numbers(node: Any, prefix: str, out: dict[str, float]) -> None:
    """Finite numeric leaves of a JSON document by dotted path; booleans count as 0/1, strings are ignored."""
    if isinstance(node, dict):
        for k, v in node.items():
            _numbers(v, f"{prefix}{k}.", out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _numbers(v, f"{prefix}{i}.", out)
    elif isinstance(node, (int, float)) and math.isfinite(node):
        out[prefix[:-1] or "value"] = float(node)


def parse_payload(payload: bytes, mode: str = "auto") -> tuple[np.ndarray | None, dict[str, float] | None]:
    """(frame, values) from an MQTT payload; ValueError saying why when it carries neither."""
    if mode == "image" or (mode == "auto" and payload.startswith(_IMAGE_MAGIC)):
        return _decode_image(payload), None
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON ({e})") from None
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    frame = None
    if isinstance(doc, dict) and isinstance(doc.get("image"), str):
        try:
            frame = _decode_image(base64.b64decode(doc.pop("image"), validate=True))
        except binascii.Error:
            raise ValueError("its 'image' field is not base64") from None
    values: dict[str, float] = {}
    try:
        _numbers(doc, "", values)
    except RecursionError:  # decodable, but deeper than the walk may go
        raise ValueError("JSON nested too deep") from None
    if frame is None and not values:
        raise ValueError("no numeric field and no image")
    return frame, values or None


class MqttSource(Source):
    """Subscribes on paho's network thread, which also reconnects; a bounded queue drops the oldest messages."""

    def __init__(self, cfg: MqttSourceConfig) -> None:
        super().__init__(cfg.id or f"mqtt:{cfg.topic}", live=True)
        self.cfg = cfg
        self._queue: deque[tuple[float, str, np.ndarray | None, dict[str, float] | None]] = deque(maxlen=cfg.queue)
        self._cond = threading.Condition()
        self._stats.update(connected=False, subscribed=False, reconnects=0, dropped=0)
        self._ever = False

    def stop(self) -> None:
        super().stop()
        with self._cond:
            self._cond.notify_all()

    def probe(self) -> None:
        client, m = make_client(self.cfg.mqtt, "probe"), self.cfg.mqtt
        try:
            client.connect(m.host, m.port, m.keepalive_s)
            client.disconnect()
        except (OSError, ValueError) as e:
            raise UnavailableError(f"source {self.id}: cannot reach the MQTT broker {m.host}:{m.port}: {e}",
                                   hint="check the broker's address and that it runs") from None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("source %s: broker refused the connection: %s", self.id, reason_code)
            return
        if self._ever:
            self._count("reconnects")
        self._ever = True
        self._set("connected", True)
        client.subscribe(self.cfg.topic, qos=self.cfg.qos)  # again after each reconnect: the session was clean

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._set("subscribed", not any(rc.is_failure for rc in reason_codes))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._set("connected", False)
        self._set("subscribed", False)
        if not self._stop.is_set():
            log.warning("source %s: lost the broker (%s); reconnecting", self.id, reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        ts = time.time()
        try:
            frame, values = parse_payload(bytes(msg.payload), self.cfg.payload)
        except Exception as e:  # anything escaping here ends paho's network thread: no message would come again
            self._skip(f"malformed payload on {msg.topic}: {e}")
            return
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self._count("dropped")
            self._queue.append((ts, msg.topic, frame, values))
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Item]:
        client = make_client(self.cfg.mqtt, "source")
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_message, client.on_subscribe = self._on_message, self._on_subscribe
        client.reconnect_delay_set(1, 30)
        client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive_s)
        client.loop_start()
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set():
                        return
                    ts, topic, frame, values = self._queue.popleft()
                yield self._item(ts, frame=frame, values=values, topic=topic)
        finally:
            self._stop.set()
            client.disconnect()
            client.loop_stop()
            self._set("connected", False)
