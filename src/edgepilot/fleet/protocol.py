"""The fleet's MQTT topics and the broker address option shared by agents, inventory and controller.

    edgepilot/fleet/<class>/<device>/state    retained, QoS 1: identity, model version, slots, last update, health
    edgepilot/fleet/<class>/<device>/status   retained, QoS 1: "online", or "offline" (also the last will)
    edgepilot/fleet/<class>/<device>/cmd      QoS 1: {"op": "update"|"rollback", "rollout", "target", "version"}

The class level lets a controller (or a broker cluster's shared subscription) take one device class only.
"""
from __future__ import annotations

import re

from edgepilot.errors import ConfigError
from edgepilot.runtime.mqtt import MqttConfig

PREFIX = "edgepilot/fleet"
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def state_topic(device_class: str, device: str) -> str:
    return f"{PREFIX}/{device_class}/{device}/state"


def status_topic(device_class: str, device: str) -> str:
    return f"{PREFIX}/{device_class}/{device}/status"


def cmd_topic(device_class: str, device: str) -> str:
    return f"{PREFIX}/{device_class}/{device}/cmd"


def subscription(kind: str, device_class: str | None = None) -> str:
    """The filter for every device's `kind` topic, of one class or all."""
    return f"{PREFIX}/{device_class or '+'}/+/{kind}"


def device_of(topic: str) -> tuple[str, str, str] | None:
    """(class, device, kind) of a fleet topic, None for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or not all(map(_DEVICE.match, parts[2:4])):
        return None
    return parts[2], parts[3], parts[4]


def check_device_id(device: str) -> str:
    if not _DEVICE.match(device):
        raise ConfigError(f"device id {device!r} is not a plain name", hint="letters, digits, '_', '.', '-'")
    return device


def broker(address: str) -> MqttConfig:
    """HOST:PORT (or HOST) as broker settings."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "1883")
    try:
        return MqttConfig(host=host or "127.0.0.1", port=int(port))
    except ValueError as e:
        raise ConfigError(f"--broker {address!r} is not HOST:PORT", hint="e.g. --broker 127.0.0.1:1883") from e
