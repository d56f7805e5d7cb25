"""Broker settings shared by the MQTT source, the MQTT outbox and the alert sink, and the one place a paho client
is made."""
from __future__ import annotations

import os
import uuid

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.optional import require


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None  # default: edgepilot-<role>-<random>; fix it to keep a persistent session
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password, never the password
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = Field(30, ge=5)


def make_client(cfg: MqttConfig, role: str, *, clean_session: bool = True):
    """A paho-mqtt 2.x client (callback API v2) with credentials and TLS from `cfg`; not connected yet."""
    mqtt = require("paho.mqtt.client", "serve")
    client_id = cfg.client_id or f"edgepilot-{role}-{uuid.uuid4().hex[:8]}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
    if cfg.username:
        client.username_pw_set(cfg.username, os.environ.get(cfg.password_env or "", None))
    if cfg.tls:
        client.tls_set(ca_certs=cfg.ca_file)
    return client
