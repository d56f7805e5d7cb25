"""Where results and events go: stdout, JSONL files, MQTT (through the durable outbox), webhooks (spooled, retried),
annotated video and snapshots. A sink that fails is logged and counted; it never stops the pipeline."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from edgepilot.errors import ConfigError
from edgepilot.runtime.sinks.base import Sink
from edgepilot.runtime.sinks.jsonl import JsonlSink, JsonlSinkConfig
from edgepilot.runtime.sinks.mqtt import MqttSink, MqttSinkConfig
from edgepilot.runtime.sinks.snapshots import SnapshotSink, SnapshotSinkConfig
from edgepilot.runtime.sinks.stdout import StdoutSink, StdoutSinkConfig
from edgepilot.runtime.sinks.video import VideoSink, VideoSinkConfig
from edgepilot.runtime.sinks.webhook import WebhookSink, WebhookSinkConfig

__all__ = [
    "JsonlSink", "JsonlSinkConfig", "MqttSink", "MqttSinkConfig", "Sink", "SinkConfig", "SnapshotSink",
    "SnapshotSinkConfig", "StdoutSink", "StdoutSinkConfig", "VideoSink", "VideoSinkConfig", "WebhookSink",
    "WebhookSinkConfig", "open_sink",
]

SinkConfig = Annotated[StdoutSinkConfig | JsonlSinkConfig | MqttSinkConfig | WebhookSinkConfig | VideoSinkConfig
                       | SnapshotSinkConfig, Field(discriminator="type")]

_SINKS: dict[type[BaseModel], type[Sink]] = {
    StdoutSinkConfig: StdoutSink, JsonlSinkConfig: JsonlSink, MqttSinkConfig: MqttSink,
    WebhookSinkConfig: WebhookSink, VideoSinkConfig: VideoSink, SnapshotSinkConfig: SnapshotSink,
}


def open_sink(cfg: SinkConfig, *, pipeline: str, workdir: Path,
              fps_of: Callable[[str], float | None] = lambda source: None) -> Sink:
    """The sink for a config; a file or folder it cannot create is a ConfigError now, not a failure per item."""
    sink = _SINKS.get(type(cfg))
    if sink is None:
        raise ConfigError(f"unknown sink {cfg!r}")
    try:
        return sink.open(cfg, pipeline=pipeline, workdir=workdir, fps_of=fps_of)
    except OSError as e:
        raise ConfigError(f"sink {cfg.type}: {e}") from e
