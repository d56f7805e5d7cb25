"""The pipeline YAML: its config models (PipelineConfig, ServerConfig) and reading a file with its paths resolved."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from edgepilot.config import load_yaml
from edgepilot.runtime.decoders import PostprocessConfig
from edgepilot.runtime.loader import ModelConfig
from edgepilot.runtime.logs import LogConfig
from edgepilot.runtime.model_watch import link_target
from edgepilot.runtime.preprocess import PreprocessConfig
from edgepilot.runtime.quality import QualityConfig
from edgepilot.runtime.rules import RuleConfig
from edgepilot.runtime.scheduler import SchedulerConfig
from edgepilot.runtime.sinks import SinkConfig
from edgepilot.runtime.sources import SourceConfig

_PATH_FIELDS = {"path", "dir", "file", "outbox", "labels_file", "cache_dir", "ca_file", "models"}


class ServerConfig(BaseModel):
    """`server:` in the pipeline YAML: serve the stream of results and events (WebSocket /stream), /metrics, and
    optionally a model repository, while the pipeline runs."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    models: str | None = Field(None, description="a model repository to serve too (as `edgepilot serve`)")
    serve_model: bool = Field(False, description="serve the pipeline's own model too, named as the pipeline "
                                                 "(KServe v2, TF Serving), swapped with it")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("pipeline", pattern=r"^[A-Za-z0-9_.-]+$", description="used in MQTT topics and logs")
    model: ModelConfig
    sources: list[SourceConfig] = Field(min_length=1)
    quality: QualityConfig = QualityConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    postprocess: PostprocessConfig = PostprocessConfig(type="classification")
    scheduler: SchedulerConfig = SchedulerConfig()
    rules: list[RuleConfig] = []
    sinks: list[SinkConfig] = Field(default_factory=lambda: [{"type": "stdout"}])
    logging: LogConfig | None = None
    workdir: str = Field(".edgepilot", description="state kept between runs (webhook spools)")
    server: ServerConfig | None = None
    _source: tuple | None = PrivateAttr(None)  # (the file as given, what it resolved to when read)

    @property
    def source(self) -> tuple | None:
        return self._source

    @model_validator(mode="after")
    def _mqtt_actions_have_a_broker(self) -> PipelineConfig:
        # an {mqtt: topic} action publishes through the pipeline's MQTT sink: without one it would go nowhere
        if any(a.kind == "mqtt" for r in self.rules for a in r.actions) and not any(
                s.type == "mqtt" for s in self.sinks):
            raise ValueError("a rule action publishes to an MQTT topic, but no sink is of type mqtt "
                             "(add one: it names the broker and the outbox)")
        return self


def load_pipeline_config(path: str | Path, base: str | Path | None = None) -> PipelineConfig:
    """Validated config with every relative path made relative to the YAML file's folder (links resolved), or to
    `base`."""
    path = Path(path)
    target = link_target(path)  # before the read: a link switched meanwhile shows as a change, never as none
    cfg = load_yaml(path, PipelineConfig)
    _resolve_paths(cfg, Path(base) if base is not None else path.resolve().parent)
    cfg._source = (str(path), target)
    return cfg


def _resolve_paths(node: Any, base: Path) -> None:
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            value = getattr(node, name)
            if name in _PATH_FIELDS | {"workdir"} and isinstance(value, str) and "://" not in value \
                    and not Path(value).is_absolute():
                object.__setattr__(node, name, str(base / value))
            else:
                _resolve_paths(value, base)
    elif isinstance(node, list):
        for v in node:
            _resolve_paths(v, base)
