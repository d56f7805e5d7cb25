"""Where results and events go: stdout, JSONL files, MQTT (through the durable outbox), webhooks (spooled, retried),
annotated video and snapshots. A sink that fails is logged and counted; it never stops the pipeline."""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgepilot.errors import ConfigError, RuntimeFailure
from edgepilot.runtime.item import Event, Item
from edgepilot.runtime.mqtt import MqttConfig

log = logging.getLogger(__name__)

What = Literal["results", "events", "all"]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StdoutSinkConfig(_Base):
    type: Literal["stdout"]
    what: What = Field("events", description="results: every item; events: only rule events; all: both")


class JsonlSinkConfig(_Base):
    type: Literal["jsonl"]
    path: str
    what: What = "all"
    max_bytes: int | None = Field(None, ge=1024, description="rotate the file past this size")
    backups: int = Field(3, ge=0)


class MqttSinkConfig(_Base):
    type: Literal["mqtt"]
    mqtt: MqttConfig = MqttConfig()
    topic: str = Field("edgepilot/{pipeline}", description="prefix: events go to <topic>/events, results (when "
                                                           "enabled) to <topic>/<source>/results")
    results: bool = Field(False, description="also publish every result (events are always published)")
    outbox: str = Field("outbox.db", description="SQLite file holding messages until the broker acknowledges them")
    qos: Literal[0, 1] = 1
    drain_s: float = Field(5.0, ge=0, description="at shutdown, wait this long for pending messages to be "
                                                  "acknowledged; the rest stay in the outbox for the next run")


class WebhookSinkConfig(_Base):
    type: Literal["webhook"]
    url: str
    retry_s: float = Field(5.0, gt=0, description="first retry delay; doubles up to max_retry_s")
    max_retry_s: float = Field(120.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)


class VideoSinkConfig(_Base):
    type: Literal["video"]
    path: str
    fps: float | None = Field(None, gt=0, description="default: the source's frame rate, else 25")
    codec: str = Field("mp4v", min_length=4, max_length=4)
    source: str | None = Field(None, description="which source to record; default: the first one seen")


class SnapshotSinkConfig(_Base):
    type: Literal["snapshots"]
    dir: str
    on: Literal["events", "alerts", "detections"] = "events"
    max_files: int = Field(1000, ge=1, description="oldest snapshots are removed past this many")
    jpeg_quality: int = Field(90, ge=10, le=100)


SinkConfig = Annotated[StdoutSinkConfig | JsonlSinkConfig | MqttSinkConfig | WebhookSinkConfig | VideoSinkConfig
                       | SnapshotSinkConfig, Field(discriminator="type")]


def _wanted(item: Item, what: str) -> bool:
    return what != "events" or bool(item.events)


class StdoutSink:
    name = "stdout"

    def __init__(self, cfg: StdoutSinkConfig) -> None:
        self.cfg = cfg

    def write(self, item: Item) -> None:
        if self.cfg.what == "events":
            for e in item.events:
                sys.stdout.write(e.to_json() + "\n")
        elif _wanted(item, self.cfg.what):
            sys.stdout.write(item.to_json() + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        pass


class JsonlSink:
    name = "jsonl"

    def __init__(self, cfg: JsonlSinkConfig) -> None:
        self.cfg, self.path = cfg, Path(cfg.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, item: Item) -> None:
        if self.cfg.what == "events":
            lines = [e.to_json() for e in item.events]
        else:
            lines = [item.to_json()] if _wanted(item, self.cfg.what) else []
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


class MqttSink:
    """Events (and optionally results) through the SQLite outbox: accepted means on disk, delivered in order with
    QoS 1 once the broker is reachable. Every payload carries its event_id so subscribers can drop duplicates."""

    name = "mqtt"

    def __init__(self, cfg: MqttSinkConfig, pipeline: str) -> None:
        from edgepilot.runtime.outbox import Outbox

        self.cfg = cfg
        self.prefix = cfg.topic.format(pipeline=pipeline).rstrip("/")
        self.outbox = Outbox(cfg.outbox, cfg.mqtt, qos=cfg.qos)

    def write(self, item: Item) -> None:
        rows = []
        for e in item.events:
            body = e.to_json()
            for topic in (f"{self.prefix}/events", *e.mqtt_topics):
                # one id per (event, topic) so a subscriber to both sees each once, and retries stay idempotent
                eid = e.event_id if topic == f"{self.prefix}/events" else _sub_id(e.event_id, topic)
                rows.append((topic, body, eid))
        if self.cfg.results and item.result is not None:
            d = item.to_dict()
            d["event_id"] = _sub_id(f"{item.source}/{item.seq}/{item.ts}", "results")
            rows.append((f"{self.prefix}/{item.source}/results", json.dumps(d), d["event_id"]))
        if rows:
            self.outbox.put_many(rows)  # one transaction, one fsync per item

    def close(self) -> None:
        self.outbox.flush(self.cfg.drain_s)  # what is still pending is reported by undelivered()
        self.outbox.close()

    def undelivered(self) -> tuple[int, str]:
        """Messages accepted but not acknowledged by the broker, and where they wait for the next run."""
        return self.outbox.pending(), f"the MQTT outbox {self.cfg.outbox}"


def _sub_id(base: str, topic: str) -> str:
    return hashlib.sha1(f"{base}|{topic}".encode()).hexdigest()[:32]


class WebhookSink:
    """POSTs events as JSON from a background thread; undelivered ones wait in a spool file (in order, across
    restarts) and are retried with exponential back-off."""

    name = "webhook"

    def __init__(self, cfg: WebhookSinkConfig, spool_dir: Path, *, only_routed: bool = False) -> None:
        from edgepilot.monitor.alerts import WebhookSink as Poster

        self.cfg, self.only_routed = cfg, only_routed
        spool = spool_dir / f"webhook-{hashlib.sha1(cfg.url.encode()).hexdigest()[:12]}.jsonl"
        self.poster = Poster(cfg.url, spool, timeout_s=cfg.timeout_s)
        self._left = 0  # events waiting in the spool after the last delivery attempt
        self._q: queue.Queue[Event | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def write(self, item: Item) -> None:
        for e in item.events:
            if not self.only_routed or self.cfg.url in e.webhooks:
                self._q.put(e)

    def _run(self) -> None:
        delay = self.cfg.retry_s
        pending = self.poster.flush()  # what an earlier run left in the spool goes first
        while not self._stop.is_set():
            try:
                e = self._q.get(timeout=delay if pending else 0.5)
            except queue.Empty:
                e = None
            if e is not None:
                pending = self.poster.send(e)
            elif pending:
                pending = self.poster.flush()
            self._left = pending
            delay = min(delay * 2, self.cfg.max_retry_s) if pending else self.cfg.retry_s

    def close(self) -> None:
        while not self._q.empty():  # spool what is queued (delivery is attempted; leftovers stay for next time)
            self._left = self.poster.send(self._q.get())
        self._stop.set()
        self._thread.join(self.cfg.timeout_s + 1)

    def undelivered(self) -> tuple[int, str]:
        return self._left, f"the webhook spool {self.poster.spool}"


class VideoSink:
    name = "video"

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


class SnapshotSink:
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

    def close(self) -> None:
        pass


def open_sink(cfg, *, pipeline: str, workdir: Path, fps_of=lambda source: None):
    try:
        if isinstance(cfg, StdoutSinkConfig):
            return StdoutSink(cfg)
        if isinstance(cfg, JsonlSinkConfig):
            return JsonlSink(cfg)
        if isinstance(cfg, MqttSinkConfig):
            return MqttSink(cfg, pipeline)
        if isinstance(cfg, WebhookSinkConfig):
            return WebhookSink(cfg, workdir)
        if isinstance(cfg, VideoSinkConfig):
            return VideoSink(cfg, fps_of)
        if isinstance(cfg, SnapshotSinkConfig):
            return SnapshotSink(cfg)
    except OSError as e:
        raise ConfigError(f"sink {cfg.type}: {e}") from e
    raise ConfigError(f"unknown sink {cfg!r}")
