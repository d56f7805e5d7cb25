"""The fleet's MQTT topics and the broker address option shared by agents, inventory and controller.

    edgepilot/fleet/<device>/state    retained, QoS 1: identity, model version, slots, last update, health
    edgepilot/fleet/<device>/status   retained, QoS 1: "online", or "offline" (also the last will)
    edgepilot/fleet/<device>/cmd      QoS 1: {"op": "update"|"rollback", "rollout", "target", "version"}
"""
from __future__ import annotations

import re

from edgepilot.errors import ConfigError
from edgepilot.runtime.mqtt import MqttConfig

PREFIX = "edgepilot/fleet"
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def state_topic(device: str) -> str:
    return f"{PREFIX}/{device}/state"


def status_topic(device: str) -> str:
    return f"{PREFIX}/{device}/status"


def cmd_topic(device: str) -> str:
    return f"{PREFIX}/{device}/cmd"


def device_of(topic: str) -> tuple[str, str] | None:
    """(device, kind) of a fleet topic, None for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX or not _DEVICE.match(parts[2]):
        return None
    return parts[2], parts[3]


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
