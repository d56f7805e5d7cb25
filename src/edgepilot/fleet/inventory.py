"""The fleet inventory: what every agent last published on its retained state and status topics."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from edgepilot.fleet.protocol import device_of, subscription
from edgepilot.runtime.mqtt import MqttConfig, make_client

log = logging.getLogger(__name__)
COLUMNS = ("device", "target", "online", "name", "version", "active", "slots", "update", "p95_ms", "error_rate",
           "crashes", "confidence", "inferences", "temperature_c", "health")


class Inventory:
    """Subscribes to every device's state and status; `devices()` is the latest of each, `on_state` hooks
    see every state message as it arrives (the controller's health samples)."""

    def __init__(self, cfg: MqttConfig, role: str = "inventory", classes: list[str] | None = None) -> None:
        self.cfg = cfg
        self.classes = classes or [None]  # None: every class
        self._devices: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.on_state: list[Callable[[str, dict], None]] = []
        self.received = 0
        self.client = make_client(cfg, role)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 5)
        self._connected = threading.Event()

    def start(self, timeout_s: float = 10.0) -> Inventory:
        from edgepilot.errors import UnavailableError

        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise UnavailableError(f"the MQTT broker {self.cfg.host}:{self.cfg.port} did not answer in {timeout_s} s",
                                   hint="start the broker, or give --broker HOST:PORT")
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe([(subscription(kind, c), 1) for c in self.classes for kind in ("state", "status")])
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        found = device_of(msg.topic)
        if found is None:
            return
        device_class, device, kind = found
        self.received += 1
        if not msg.payload:  # a cleared retained topic: the device was removed
            with self._lock:
                self._devices.pop(device, None)
            return
        try:
            if kind == "status":
                with self._lock:
                    entry = self._devices.setdefault(device, {"device": device, "target": device_class})
                    entry["online"] = msg.payload == b"online"
                return
            if kind != "state":
                return
            body = json.loads(msg.payload)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as e:  # one device's bad message never stops the inventory (paho's
            log.warning("%s: unreadable message (%s)", msg.topic, e)  # thread ends on anything escaping here)
            return
        body["device"], body["received"] = device, time.time()
        body.setdefault("target", device_class)
        with self._lock:
            online = self._devices.get(device, {}).get("online")
            self._devices[device] = {**body, "online": online if online is not None else True}
        for hook in self.on_state:
            try:
                hook(device, body)
            except Exception:
                log.exception("%s: handling its state failed", device)

    def get(self, device: str) -> dict | None:
        """One device's latest record (a copy), without copying the whole fleet."""
        with self._lock:
            found = self._devices.get(device)
            return dict(found) if found is not None else None

    def devices(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self._devices.items()}

    def settled(self, settle_s: float = 1.0, limit_s: float = 30.0) -> dict[str, dict]:
        """The devices once no new one has appeared for `settle_s` (retained messages arrive in a burst)."""
        seen, quiet_since, start = -1, time.monotonic(), time.monotonic()
        while time.monotonic() - quiet_since < settle_s and time.monotonic() - start < limit_s:
            time.sleep(0.1)
            if len(self._devices) != seen:
                seen, quiet_since = len(self._devices), time.monotonic()
        return self.devices()

    def wait_for(self, predicate: Callable[[dict[str, dict]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.devices()):
                return True
            time.sleep(0.1)
        return predicate(self.devices())


def collect(cfg: MqttConfig, settle_s: float = 1.0) -> dict[str, dict]:
    """The fleet as the broker's retained messages tell it (waits until no new device arrived for `settle_s`)."""
    inv = Inventory(cfg, "status").start()
    try:
        return inv.settled(settle_s)
    finally:
        inv.stop()


def matches(device: dict, selector: dict[str, str]) -> bool:
    """key=value pairs over the device's published fields (target, name, version ...)."""
    return all(str(device.get(k)) == v for k, v in selector.items())


def row(device: dict) -> dict:
    """One table row: identity, model, slots, last update and health."""
    health = device.get("health") or {}
    slots = device.get("slots") or {}
    update = device.get("update") or {}
    return {
        "device": device["device"], "target": device.get("target"), "online": device.get("online"),
        "name": device.get("name"), "version": device.get("version"), "active": device.get("active"),
        "slots": " ".join(f"{s}:{(v or {}).get('version', '-')}" for s, v in sorted(slots.items())),
        "update": f"{update.get('state', '')} v{update.get('version')}" if update else "",
        **{k: health.get(k) for k in ("p95_ms", "error_rate", "crashes", "confidence", "inferences",
                                      "temperature_c")},
        "health": health.get("source", "") + (f": {health['missing']}" if health.get("missing") else ""),
    }
