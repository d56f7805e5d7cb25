"""The webhook sink: events POSTed as JSON from a background thread, spooled and retried while the server is away."""
from __future__ import annotations

import hashlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgepilot.runtime.item import Event, Item
from edgepilot.runtime.sinks.base import Sink, SinkConfigBase

log = logging.getLogger(__name__)


class WebhookSinkConfig(SinkConfigBase):
    type: Literal["webhook"]
    url: str
    retry_s: float = Field(5.0, gt=0, description="first retry delay; doubles up to max_retry_s")
    max_retry_s: float = Field(120.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)


class WebhookSink(Sink):
    """POSTs events as JSON from a background thread; undelivered ones wait in a spool file (in order, across
    restarts) and are retried with exponential back-off."""

    name = "webhook"

    @classmethod
    def open(cls, cfg: WebhookSinkConfig, *, pipeline: str, workdir: Path, fps_of: Any) -> WebhookSink:
        return cls(cfg, workdir)

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
        delay, held = self.cfg.retry_s, None  # held: an event the spool could not take (a full disk, say)
        pending = self._attempt(self.poster.flush, default=1)  # what an earlier run left goes first
        while not self._stop.is_set():
            e = held
            if e is None:
                try:
                    e = self._q.get(timeout=delay if pending else 0.5)
                except queue.Empty:
                    pass
            elif self._stop.wait(delay):
                break
            if e is not None:
                held = None if self._attempt(self.poster.keep, e, default=False) else e
                pending = self._attempt(self.poster.flush, default=max(pending, 1))
            elif pending:
                pending = self._attempt(self.poster.flush, default=pending)
            self._left = pending + (held is not None)
            delay = min(delay * 2, self.cfg.max_retry_s) if self._left else self.cfg.retry_s

    def _attempt(self, step, *args, default: int):
        """`step(*args)`, or `default` when it failed (logged): the thread never dies."""
        try:
            return step(*args)
        except Exception as e:
            log.warning("webhook %s: %s: %s; retrying", self.cfg.url, type(e).__name__, e)
            return default

    def close(self) -> None:
        while not self._q.empty():  # spool what is queued (delivery is attempted; leftovers stay for next time)
            self._left = self.poster.send(self._q.get())
        self._stop.set()
        self._thread.join(self.cfg.timeout_s + 1)

    def undelivered(self) -> tuple[int, str]:
        return self._left, f"the webhook spool {self.poster.spool}"
