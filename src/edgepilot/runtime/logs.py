"""Structured JSON logs with size-based rotation, for a runtime that runs unattended for months."""
from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field("logs/edgepilot.jsonl", description="one JSON object per line")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="rotate past this size")
    backups: int = Field(5, ge=0, description="rotated files kept (.1 newest)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 6),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
                 "thread": record.threadName}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def add_json_log(cfg: LogConfig) -> logging.Handler:
    """Attaches a rotating JSON handler to the `edgepilot` logger; returns it so the caller can remove it."""
    path = Path(cfg.file)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=cfg.max_bytes, backupCount=cfg.backups,
                                                   encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.setLevel(cfg.level)
    logger = logging.getLogger("edgepilot")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.getLevelName(cfg.level):
        logger.setLevel(cfg.level)
    return handler
