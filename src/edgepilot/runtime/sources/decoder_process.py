"""`decode: process` on a video, camera or stream source: decoding, the quality checks and the preprocessing run in
a child process (no shared GIL with inference), and frames with their model tensors come back through a ring of
shared-memory slots that the pipeline's items point into (no copy on the way to the engine).

The pipeline process owns the shared memory: it creates it, and unlinks it when the source stops, on every exit path
(and Python's resource tracker removes it should this process be killed). A slot goes back to the child when the
pipeline releases its item (delivered, dropped or skipped). The child runs decoder_child.py; one that dies is
restarted like a dropped stream, and a video file then goes on after the last frame it delivered.
"""
from __future__ import annotations

import logging
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.connection import Listener
from typing import Any

import numpy as np

from edgepilot.errors import EdgepilotError, RuntimeFailure
from edgepilot.runtime.item import Item
from edgepilot.runtime.quality import combined_stats
from edgepilot.runtime.sources.base import Source

log = logging.getLogger(__name__)
_CHILD = "edgepilot.runtime.sources.decoder_child"  # the child's module, run with `python -m`
KEY_ENV = "EDGEPILOT_DECODER_KEY"  # the connection's authentication key, handed to the child out of band
# Slots go back to the child in batches of this many: each message wakes the child (a context switch and a GIL
# hand-over there, and a file decoder waiting for room decodes a burst instead of a frame per wake-up). A file
# decoder that waits gets them all the same: every slot it lacks is on its way here, or held by an item the
# pipeline is delivering. A live decoder drops frames while it has no slot, so near the ring's end it gets each
# slot back at once.
_FREE_BATCH = 8


@dataclass
class Stages:
    """What runs in the child after decoding: the pipeline's quality checks and preprocessing (picklable configs)."""

    quality_cfg: Any
    preprocess_cfg: Any
    spec: Any


class ProcessSource(Source):
    """Wraps a capture source config; iterating starts the decoder process, stop() ends it and frees the ring."""

    def __init__(self, cfg, inner: Source, *, slots: int = 32, max_restarts: int = 5) -> None:
        super().__init__(inner.id, inner.live)
        self.cfg, self.inner, self.slots, self.max_restarts = cfg, inner, slots, max_restarts
        self.fps = getattr(inner, "fps", None)
        self.stages: Stages | None = None
        self.zero_copy = False  # another consumer may keep items without calling done(): it gets copies
        self._resume: dict | None = None
        self._ring: shared_memory.SharedMemory | None = None
        self._layout: tuple | None = None  # frame shape, tensor shape, tensor dtype, slot bytes
        self._held: set[int] = set()
        self._freed: list[int] = []  # released, not yet sent back to the child
        self._conn = None
        self._send_lock = threading.Lock()
        self._child_stats: dict[str, Any] = {}
        self._quality: dict | None = None  # the quality checks' stats of the children before this one
        self._child_quality: dict | None = None  # this child's, as last reported
        self._on_skipped = None
        self.decoder_pid: int | None = None

    def attach(self, stages: Stages, on_skipped) -> None:
        """The pipeline's quality and preprocessing, to run in the child (items then come with their tensors); the
        pipeline calls `item.done()` on every item, so its items point into the ring instead of holding copies.
        `on_skipped(n)` is called with the frames the child's quality check dropped."""
        self.stages, self._on_skipped = stages, on_skipped
        self.zero_copy = True

    def quality_stats(self) -> dict:
        """The children's quality checks' stats() added up, for the pipeline to add to its own."""
        with self._lock:
            return combined_stats(self._quality, self._child_quality)

    def position(self, item: Item) -> dict[str, Any] | None:
        return self.inner.position(item)

    def resume_after(self, position: dict[str, Any]) -> None:
        self._resume = position

    def stats(self) -> dict[str, Any]:
        """The decoder's counters (every child so far) with this side's own (decoder_restarts)."""
        with self._lock:
            out = dict(self._stats)
            for k, v in self._child_stats.items():
                out[k] = out.get(k, 0) + v if isinstance(v, int) and not isinstance(v, bool) else v
            return out

    def _fold_child_stats(self) -> None:
        """A child's counters start at zero: add the last one's to the running totals before the next starts."""
        with self._lock:
            for k, v in self._child_stats.items():
                self._stats[k] = self._stats.get(k, 0) + v if isinstance(v, int) and not isinstance(v, bool) else v
            self._child_stats = {}
            self._quality, self._child_quality = combined_stats(self._quality, self._child_quality), None

    # -- the parent's loop ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Item]:
        restarts, last_index = 0, None
        try:
            while not self._stop.is_set():
                proc = self._start_child(last_index)
                self.decoder_pid = proc.pid
                ended = False
                try:
                    for item in self._receive(proc):
                        last_index = item.meta.get("frame_index", last_index)
                        restarts = 0  # it delivered: the next failure starts the count again
                        yield item
                    ended = True
                except _ChildDied:
                    pass
                finally:
                    self._end_child(proc)
                    self._fold_child_stats()
                if ended or self._stop.is_set():
                    return
                restarts += 1
                self._count("decoder_restarts")
                if restarts > self.max_restarts:
                    raise RuntimeFailure(f"source {self.id}: the decoder process died {restarts} times in a row",
                                         hint="run the source with decode: thread to see the decoder's error")
                log.warning("source %s: the decoder process died (exit %s); restarting it", self.id, proc.returncode)
                if not self._sleep(min(0.2 * 2 ** restarts, 5.0)):
                    return
        finally:
            self._free_ring()

    def _start_child(self, last_index):
        """A fresh interpreter (`python -m` decoder_child), not a fork: the engines' threads and locks stay here, and
        unlike multiprocessing's spawn it never re-imports the user's main script."""
        resume = self._resume
        if last_index is not None and getattr(self.cfg, "type", None) == "video":
            resume = {"after_frame_index": last_index}  # a restarted file decoder goes on where it stopped
        address = os.path.join(tempfile.gettempdir(), f"edgepilot-decoder-{uuid.uuid4().hex[:12]}.sock")
        key = os.urandom(16)
        listener = Listener(address, "AF_UNIX", authkey=key)
        try:
            proc = subprocess.Popen([sys.executable, "-m", _CHILD, address], stdin=subprocess.DEVNULL,
                                    env={**os.environ, KEY_ENV: key.hex()})
            accepted: list = []
            waiter = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
            waiter.start()
            deadline = time.monotonic() + 60
            while waiter.is_alive() and proc.poll() is None and time.monotonic() < deadline:
                waiter.join(0.1)
        finally:
            listener.close()  # also removes the socket file
        if not accepted:
            proc.kill()
            proc.wait()
            raise RuntimeFailure(f"source {self.id}: the decoder process did not start (exit {proc.returncode})")
        conn = accepted[0]
        with self._send_lock:  # the free slots, taken as the connection is installed: none is sent twice or lost
            with self._lock:
                self._freed = []
                free = [i for i in range(self.slots) if i not in self._held]
            ring = None if self._ring is None else (self._ring.name, self._layout, free)
            conn.send((self.cfg, self.stages, resume, ring, self.slots))
            self._conn = conn
        return proc

    def _receive(self, proc) -> Iterator[Item]:
        conn = self._conn
        poller = select.poll()  # one for the connection (conn.poll builds a selector at every call)
        poller.register(conn.fileno(), select.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(100):  # readable, or hung up (then recv raises EOFError)
                    if proc.poll() is not None:
                        raise _ChildDied()
                    continue
                kind, payload = conn.recv()
            except (EOFError, OSError):
                raise _ChildDied() from None
            if kind == "layout":
                self._make_ring(payload)
                self._send(("ring", (self._ring.name, self._layout, list(range(self.slots)))))
            elif kind == "item":
                yield self._item_from(*payload)
            elif kind in ("stats", "end"):
                with self._lock:
                    self._child_stats, self._child_quality = payload[0], payload[1]
                if kind == "end":
                    if payload[2]:
                        self._on_skipped(payload[2])
                    return None
            elif kind == "error":
                raise EdgepilotError(payload)
        return None

    def _make_ring(self, layout) -> None:
        frame_shape, tensor_shape, tensor_dtype = layout
        slot_bytes = nbytes(frame_shape, np.uint8) + (nbytes(tensor_shape, tensor_dtype) if tensor_shape else 0)
        name = f"edgepilot-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # The resource tracker removes the segment if this process is killed; started first, since starting it
        # (a new interpreter) inside SharedMemory, between creating and registering, leaves a kill window open
        resource_tracker.ensure_running()
        self._ring = shared_memory.SharedMemory(name=name, create=True, size=max(1, slot_bytes * self.slots))
        self._layout = (frame_shape, tensor_shape, tensor_dtype, slot_bytes)

    def _item_from(self, slot: int | None, header: dict, frame, tensor) -> Item:
        if slot is not None:  # the arrays live in the ring: views, no copy
            frame_shape, tensor_shape, tensor_dtype, slot_bytes = self._layout
            base = slot * slot_bytes
            frame = np.ndarray(header["frame_shape"], np.uint8, self._ring.buf, base)
            if header.get("has_tensor"):
                tensor = np.ndarray(tensor_shape, tensor_dtype, self._ring.buf, base + nbytes(frame_shape, np.uint8))
        with self._lock:  # numbered here: a restarted child numbers from 0 again
            if slot is not None:
                self._held.add(slot)
            self._seq += header.get("skipped_quality", 0)  # frames the check dropped keep their numbers, as in-process
            seq, self._seq = self._seq, self._seq + 1
        item = Item(source=self.id, seq=seq, ts=header["ts"], live=self.live, frame=frame,
                    meta=header["meta"], tensor=tensor, transform=header.get("transform"), error=header.get("error"))
        item.timings.update(header["timings"])
        item.meta["preprocessed"] = self.stages is not None
        if header.get("skipped_quality"):
            self._on_skipped(header["skipped_quality"])
        if slot is not None and self.zero_copy:
            item.release = lambda: self._release(slot)
        elif slot is not None:  # copied out, and the slot goes straight back
            item.frame = frame.copy()
            item.tensor = None if tensor is None else tensor.copy()
            self._release(slot)
        return item

    def _release(self, slot: int) -> None:
        with self._send_lock:
            with self._lock:
                if slot not in self._held:
                    return
                self._held.discard(slot)
                self._freed.append(slot)
                # at most this many slots can be free in the child: when few, a live one may be dropping frames
                child_free = self.slots - len(self._held) - len(self._freed)
                if len(self._freed) < _FREE_BATCH and (not self.live or child_free > _FREE_BATCH):
                    return
                freed, self._freed = self._freed, []
            self._send_locked(("free", freed))

    def _send(self, message) -> None:
        with self._send_lock:
            self._send_locked(message)

    def _send_locked(self, message) -> None:
        try:
            if self._conn is not None:
                self._conn.send(message)
        except (OSError, ValueError, BrokenPipeError):
            pass  # the child is gone: its replacement gets the free slots at start

    def _end_child(self, proc) -> None:
        self._send(("stop", None))
        for end in (None, proc.terminate, proc.kill):
            if end is not None:
                end()
            try:
                proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        with self._send_lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    def _free_ring(self) -> None:
        ring, self._ring = self._ring, None
        if ring is None:
            return
        try:
            ring.close()
        except BufferError:  # items still point into it: unlink anyway, the memory goes when they do
            pass
        try:
            ring.unlink()
        except FileNotFoundError:  # gone already: only the resource tracker still holds it (it would warn at exit)
            resource_tracker.unregister(ring._name, "shared_memory")


class _ChildDied(Exception):
    pass


def nbytes(shape, dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize
