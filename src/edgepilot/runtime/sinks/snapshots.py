"""The snapshots sink: annotated JPEGs of the frames with events, alerts or detections, the oldest removed."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepilot.errors import RuntimeFailure
from edgepilot.runtime.item import Item
from edgepilot.runtime.sinks.base import Sink, SinkConfigBase


class SnapshotSinkConfig(SinkConfigBase):
    type: Literal["snapshots"]
    dir: str
    on: Literal["events", "alerts", "detections"] = "events"
    max_files: int = Field(1000, ge=1, description="oldest snapshots are removed past this many")
    jpeg_quality: int = Field(90, ge=10, le=100)


class SnapshotSink(Sink):
    name = "snapshots"

    def __init__(self, cfg: SnapshotSinkConfig) -> None:
        self.cfg, self.dir = cfg, Path(cfg.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files = sorted(self.dir.glob("*.jpg"))

    def write(self, item: Item) -> None:
        import cv2

        from edgepilot.runtime.annotate import annotate

        if item.frame is None:
            return
        on = self.cfg.on
        if on == "events" and not item.events or on == "alerts" and not any(e.kind == "alert" for e in item.events) \
                or on == "detections" and not (item.result and item.result.detections):
            return
        path = self.dir / f"{item.source.replace('/', '_').replace(':', '_')}-{item.seq:08d}.jpg"
        ok, buf = cv2.imencode(".jpg", annotate(item), [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeFailure(f"cannot encode snapshot {path.name}")
        tmp = path.with_suffix(".part")
        tmp.write_bytes(buf.tobytes())
        tmp.replace(path)
        self._files.append(path)
        while len(self._files) > self.cfg.max_files:
            self._files.pop(0).unlink(missing_ok=True)
