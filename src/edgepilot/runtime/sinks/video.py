"""The video sink: one source's frames, annotated with boxes, labels, keypoints and rule states, as a video file."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgepilot.errors import RuntimeFailure
from edgepilot.runtime.item import Item
from edgepilot.runtime.sinks.base import Sink, SinkConfigBase


class VideoSinkConfig(SinkConfigBase):
    type: Literal["video"]
    path: str
    fps: float | None = Field(None, gt=0, description="default: the source's frame rate, else 25")
    codec: str = Field("mp4v", min_length=4, max_length=4)
    source: str | None = Field(None, description="which source to record; default: the first one seen")


class VideoSink(Sink):
    name = "video"

    @classmethod
    def open(cls, cfg: VideoSinkConfig, *, pipeline: str, workdir: Path, fps_of: Any) -> VideoSink:
        return cls(cfg, fps_of)

    def __init__(self, cfg: VideoSinkConfig, fps_of) -> None:
        self.cfg, self.path = cfg, Path(cfg.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fps_of = fps_of  # source id -> frame rate or None
        self._writer = None
        self._source = cfg.source
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, item: Item) -> None:
        import cv2

        from edgepilot.runtime.annotate import annotate

        if item.frame is None:
            return
        if self._source is None:
            self._source = item.source
        if item.source != self._source:
            return
        img = annotate(item)
        h, w = img.shape[:2]
        if self._writer is None:
            fps = self.cfg.fps or self._fps_of(item.source) or 25.0
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*self.cfg.codec), fps, (w, h))
            if not self._writer.isOpened():
                raise RuntimeFailure(f"cannot write video {self.path} with codec {self.cfg.codec!r}",
                                     hint="try codec mp4v (.mp4) or MJPG (.avi)")
            self._size = (w, h)
        if (w, h) != self._size:  # a video has one size: later frames of another size are fitted to it
            img = cv2.resize(img, self._size)
        self._writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
