"""What every source shares: the Source base class, the config base classes and the image decoding helpers."""
from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepilot.optional import require
from edgepilot.runtime.item import Item

log = logging.getLogger(__name__)

_WARN_EVERY_S = 5.0


def _cv2():
    return require("cv2", "vision")


def _bgr(img: np.ndarray) -> np.ndarray:
    """Any decoded image as H x W x 3 uint8 BGR: gray is expanded, alpha dropped, 16-bit scaled down."""
    cv2 = _cv2()
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def _decode_image(data: bytes) -> np.ndarray:
    img = _cv2().imdecode(np.frombuffer(data, np.uint8), -1) if data else None  # -1: IMREAD_UNCHANGED
    if img is None:
        raise ValueError("not a decodable image")
    return _bgr(img)


class _SourceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None  # default: derived from the type and the input, e.g. "video:<stem>"


class _Reconnect(_SourceBase):
    reconnect_initial_s: float = Field(0.5, gt=0)  # first wait before reopening; doubles after each failure
    reconnect_max_s: float = Field(10.0, gt=0)  # ceiling of that wait


class Source(ABC):
    """Yields Items with seq 0, 1, 2 ...; a finite source ends with its input, a live one on `stop()`."""

    def __init__(self, id: str, live: bool) -> None:
        self.id = id
        self.live = live
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seq = 0
        self._stats: dict[str, Any] = {"items": 0, "skipped": 0, "skipped_malformed": 0, "read_errors": 0}
        self._warned_at = 0.0
        self._suppressed = 0

    @abstractmethod
    def __iter__(self) -> Iterator[Item]: ...

    def probe(self) -> None:
        """`run --check`: reach the input once, raising what a run would meet. Files are checked when a source is
        made, so only live sources add to this."""
        return None

    def position(self, item: Item) -> dict[str, Any] | None:
        """Where `item` is in the input, for `resume: true`; None for sources that cannot resume."""
        return None

    def resume_after(self, position: dict[str, Any]) -> None:
        """Start after `position` (what `position()` returned for the last item a previous run delivered)."""
        return None

    def stop(self) -> None:
        """Ends the iteration within about 0.2 s, from any thread, even while a read blocks."""
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + n

    def _set(self, key: str, value: Any) -> None:
        with self._lock:
            self._stats[key] = value

    def _item(self, ts: float, **kw: Any) -> Item:
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            self._stats["items"] += 1
        return Item(source=self.id, seq=seq, ts=ts, live=self.live, frame=kw.pop("frame", None),
                    values=kw.pop("values", None), meta=kw)

    def _skip(self, reason: str, counter: str = "skipped_malformed", *, an_input: bool = True) -> None:
        """Counts a skipped input (in `counter` and in the total, `skipped`) and warns, at most once per few seconds
        so a flood cannot drown the log. `an_input=False`: a failure that skipped no input (a folder listing)."""
        self._count(counter)
        if an_input:
            self._count("skipped")
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < _WARN_EVERY_S:
                self._suppressed += 1
                return
            self._warned_at, more, self._suppressed = now, self._suppressed, 0
        log.warning("source %s: skipped %s%s", self.id, reason, f" ({more} more since the last one)" if more else "")

    def _sleep(self, seconds: float) -> bool:
        """False when stop() came first."""
        return not self._stop.wait(seconds)

    def _via_thread(self, produce: Callable[[], Iterator[Item]]) -> Iterator[Item]:
        """Runs blocking reads (OpenCV cannot interrupt one) in a daemon thread, one item ahead, so that stop()
        ends the iteration at once even while a read hangs on a dead network."""
        handoff: queue.Queue = queue.Queue(maxsize=1)
        end = object()

        def run() -> None:
            gen = produce()
            outcome: object = end
            try:
                for item in gen:
                    while not self._stop.is_set():
                        try:
                            handoff.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            pass
                    if self._stop.is_set():
                        break
            except Exception as e:  # handed to the consumer, which raises it
                outcome = e
            finally:
                gen.close()
            while not self._stop.is_set():
                try:
                    handoff.put(outcome, timeout=0.1)
                    return
                except queue.Full:
                    pass

        threading.Thread(target=run, name=f"source-{self.id}", daemon=True).start()
        try:
            while not self._stop.is_set():
                try:
                    got = handoff.get(timeout=0.1)
                except queue.Empty:
                    continue
                if got is end:
                    return
                if isinstance(got, Exception):
                    raise got
                yield got
        finally:
            self._stop.set()  # an abandoned iteration must not leave the reader running
