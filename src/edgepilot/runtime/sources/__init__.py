"""Where items come from: video files, cameras, network streams, image folders, MQTT topics and line-based sensors."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter

from edgepilot.runtime.sources.base import Source
from edgepilot.runtime.sources.capture import (
    CameraSource,
    CameraSourceConfig,
    StreamSource,
    StreamSourceConfig,
    VideoSource,
    VideoSourceConfig,
)
from edgepilot.runtime.sources.folder import IMAGE_SUFFIXES, FolderSource, FolderSourceConfig
from edgepilot.runtime.sources.mqtt import MqttSource, MqttSourceConfig, parse_payload
from edgepilot.runtime.sources.sensor import SensorSource, SensorSourceConfig

__all__ = [
    "IMAGE_SUFFIXES", "CameraSource", "CameraSourceConfig", "FolderSource", "FolderSourceConfig", "MqttSource",
    "MqttSourceConfig", "SensorSource", "SensorSourceConfig", "Source", "SourceConfig", "StreamSource",
    "StreamSourceConfig", "VideoSource", "VideoSourceConfig", "open_source", "parse_payload",
]

SourceConfig = Annotated[
    VideoSourceConfig | CameraSourceConfig | StreamSourceConfig | FolderSourceConfig | MqttSourceConfig
    | SensorSourceConfig,
    Field(discriminator="type"),
]


_SOURCES: dict[type[BaseModel], type[Source]] = {
    VideoSourceConfig: VideoSource, CameraSourceConfig: CameraSource, StreamSourceConfig: StreamSource,
    FolderSourceConfig: FolderSource, MqttSourceConfig: MqttSource, SensorSourceConfig: SensorSource,
}


def open_source(cfg: SourceConfig | dict[str, Any]) -> Source:
    """The source for a config (or its dict form); files are checked now, so a bad path fails here."""
    if isinstance(cfg, dict):
        cfg = TypeAdapter(SourceConfig).validate_python(cfg)
    source = _SOURCES[type(cfg)](cfg)  # made here in any case: a bad path fails now, not in the child
    if getattr(cfg, "decode", "thread") == "process":
        from edgepilot.runtime.sources.decoder_process import ProcessSource

        return ProcessSource(cfg, source)
    return source
