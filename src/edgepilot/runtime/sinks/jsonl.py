"""The JSONL sink: results and/or events appended to a file, rotated past a size."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepilot.runtime.item import Item
from edgepilot.runtime.sinks.base import Sink, SinkConfigBase, What, wanted


class JsonlSinkConfig(SinkConfigBase):
    type: Literal["jsonl"]
    path: str
    what: What = "all"
    max_bytes: int | None = Field(None, ge=1024, description="rotate the file past this size")
    backups: int = Field(3, ge=0)


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, cfg: JsonlSinkConfig) -> None:
        self.cfg, self.path = cfg, Path(cfg.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, item: Item) -> None:
        if self.cfg.what == "events":
            lines = [e.to_json() for e in item.events]
        else:
            lines = [item.to_json()] if wanted(item, self.cfg.what) else []
        if not lines:
            return
        self._f.write("".join(ln + "\n" for ln in lines))
        self._f.flush()
        if self.cfg.max_bytes and self._f.tell() > self.cfg.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.cfg.backups, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i}"))
        if self.cfg.backups == 0:
            self.path.unlink(missing_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._f.close()
