"""A live WebSocket stream of pipeline results and events: `/stream?source=ID&what=results|events|all`.

The pipeline's output thread publishes every item; each subscriber has a bounded queue on the server's event loop,
and a subscriber too slow to keep up loses its oldest messages (counted), never the pipeline's time.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect

from edgepilot.runtime.item import Item
from edgepilot.serve.routes import Router

log = logging.getLogger(__name__)
router = Router()
WHAT = ("results", "events", "all")


@dataclass(eq=False)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    source: str | None
    what: str
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    dropped: int = 0

    def offer(self, message: str) -> None:  # on the event loop
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(message)


class Broadcaster:
    """Thread-safe fan-out from the pipeline to the WebSocket subscribers; it also keeps each source's latest frame
    and the recent events, so a dashboard opened later starts with a picture and the alerts already raised."""

    def __init__(self, keep_events: int = 50) -> None:
        self._subs: set[_Subscriber] = set()
        self._lock = threading.Lock()
        self._frames: dict[str, tuple[int, float, object]] = {}  # source -> (seq, ts, frame)
        self._events: deque[dict] = deque(maxlen=keep_events)

    def latest_frame(self, source: str):
        """(seq, frame) of the source's latest item that had a frame, or None."""
        with self._lock:
            got = self._frames.get(source)
        return None if got is None else (got[0], got[2])

    def frames(self) -> dict[str, dict]:
        with self._lock:
            return {s: {"seq": seq, "ts": ts} for s, (seq, ts, _) in self._frames.items()}

    def recent_events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def subscribe(self, source: str | None, what: str) -> _Subscriber:
        sub = _Subscriber(asyncio.get_running_loop(), source, what)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def publish(self, item: Item) -> None:
        with self._lock:
            if item.frame is not None:  # a view into a decoder's shared memory is reused once the item is done
                frame = item.frame if item.frame.base is None else item.frame.copy()
                self._frames[item.source] = (item.seq, item.ts, frame)
            self._events.extend({"type": e.kind, **e.to_dict()} for e in item.events)
            subs = [s for s in self._subs if s.source in (None, item.source)]
        if not subs:
            return
        result = json.dumps({"type": "result", **item.to_dict()}, default=str)
        events = [json.dumps({"type": e.kind, **e.to_dict()}, default=str) for e in item.events]
        for s in subs:
            messages = ([result] if s.what in ("results", "all") else []) + (
                events if s.what in ("events", "all") else [])
            for m in messages:
                try:
                    s.loop.call_soon_threadsafe(s.offer, m)
                except RuntimeError:  # the loop has closed: the server is shutting down
                    self.unsubscribe(s)


class StreamSink:
    """The pipeline sink that feeds a Broadcaster."""

    name = "stream"

    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster

    def write(self, item: Item) -> None:
        self.broadcaster.publish(item)

    def close(self) -> None:
        pass


@router.websocket("/stream")
async def stream(ws: WebSocket, source: str | None = None, what: str = "all") -> None:
    broadcaster: Broadcaster | None = getattr(ws.app.state, "broadcaster", None)
    await ws.accept()
    if broadcaster is None or what not in WHAT:
        reason = "no pipeline runs in this server" if broadcaster is None else f"what must be one of {WHAT}"
        await ws.send_text(json.dumps({"type": "error", "error": reason}))
        await ws.close(code=1008)
        return
    sub = broadcaster.subscribe(source, what)
    await ws.send_text(json.dumps({"type": "subscribed", "source": source, "what": what}))
    try:
        while True:
            await ws.send_text(await sub.queue.get())
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away
    finally:
        broadcaster.unsubscribe(sub)
