"""The decoder process's side of `decode: process`: a fresh interpreter that opens the capture source, runs the
quality checks and preprocessing, and writes frames and tensors into the pipeline's shared-memory ring
(decoder_process.py is the pipeline's side, which owns the ring)."""
from __future__ import annotations

import os
import sys
import threading
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Client

import numpy as np

from edgepilot.errors import EdgepilotError
from edgepilot.optional import require
from edgepilot.runtime.heap import hold_freed_memory
from edgepilot.runtime.item import Item
from edgepilot.runtime.sources.decoder_process import KEY_ENV, Stages, nbytes


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach without registering with the resource tracker: the parent owns the segment (Python < 3.13 would
    otherwise unlink it, or warn, when this child exits)."""
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    resource_tracker.register = lambda *a, **k: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


def _child_main(conn, cfg, stages: Stages | None, resume, ring, slots: int) -> None:
    from edgepilot.runtime.sources import open_source

    cfg = cfg.model_copy(update={"decode": "thread"})
    # This process is one decode thread of the pipeline's thread plan: OpenCV's own pool would only add threads to
    # wake per call (colour conversion, resizing) on cores the inference already uses.
    require("cv2", "vision").setNumThreads(1)
    hold_freed_memory()  # the frame loop's arrays stay resident instead of being faulted in again on every frame
    shm = None
    try:
        source = open_source(cfg)
        if resume and "after_frame_index" in resume:
            source.start_after_frame(int(resume["after_frame_index"]))
        elif resume:
            source.resume_after(resume)
        quality = pre = None
        if stages is not None:
            from edgepilot.runtime.preprocess import Preprocessor
            from edgepilot.runtime.quality import QualityChecker

            quality, pre = QualityChecker(stages.quality_cfg), Preprocessor(stages.preprocess_cfg, stages.spec)
        free: list[int] = []
        layout = None
        if ring is not None:
            name, layout, free = ring
            shm = _attach_untracked(name)
        stop = threading.Event()

        def listen() -> None:  # slots coming back, and the stop
            nonlocal shm, layout
            while True:
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    stop.set()
                    return
                if kind == "free":
                    with free_cond:
                        free.extend(payload)
                        free_cond.notify()
                elif kind == "ring":
                    name, layout, slots_free = payload
                    with free_cond:
                        shm = _attach_untracked(name)
                        free[:] = slots_free
                        free_cond.notify()
                elif kind == "stop":
                    stop.set()
                    source.stop()
                    with free_cond:
                        free_cond.notify_all()
                    return

        free_cond = threading.Condition()
        threading.Thread(target=listen, daemon=True).start()
        pending: int | None = None  # a slot taken for the next frame, which a video source decodes into

        def frame_buffer() -> np.ndarray | None:
            nonlocal pending
            if layout is None:
                return None
            if pending is None:
                pending = _take_slot(free, free_cond, stop, source.live)
            return None if pending is None else np.ndarray(layout[0], np.uint8, shm.buf, pending * layout[3])

        if hasattr(source, "frame_buffer"):
            source.frame_buffer = frame_buffer
        skipped = 0
        last_stats = time.monotonic()
        for item in source:
            if stop.is_set():
                break
            t0 = time.perf_counter()
            if quality is not None:
                if quality.process(item) is None:
                    skipped += 1
                    continue
                try:
                    item = pre.process(item)
                except Exception as e:  # an odd frame never stops its source
                    item.error = f"preprocess failed: {e}"
            item.timings["preprocess"] = time.perf_counter() - t0
            if layout is None and item.frame is not None:  # the first frame sizes the ring
                tensor = item.tensor if isinstance(item.tensor, np.ndarray) else None
                conn.send(("layout", (item.frame.shape, None if tensor is None else tensor.shape,
                                      None if tensor is None else tensor.dtype.str)))
                with free_cond:
                    while shm is None and not stop.is_set():
                        free_cond.wait(0.1)
            slot = pending if pending is not None else _take_slot(free, free_cond, stop, item.live)
            pending = None
            if stop.is_set():
                break
            header = {"ts": item.ts, "meta": item.meta, "timings": item.timings,
                      "transform": item.transform, "error": item.error, "frame_shape": None,
                      "skipped_quality": skipped}
            skipped = 0
            frame, tensor = item.frame, item.tensor
            if slot is not None and _fits(item, layout):
                frame_shape, tensor_shape, tensor_dtype, slot_bytes = layout
                base = slot * slot_bytes
                in_slot = np.ndarray(frame.shape, np.uint8, shm.buf, base)
                if not np.may_share_memory(frame, in_slot):  # not decoded into the slot (a camera, the first frame)
                    in_slot[...] = frame
                header["frame_shape"] = frame.shape
                if isinstance(tensor, np.ndarray):
                    np.ndarray(tensor_shape, tensor_dtype, shm.buf, base + nbytes(frame_shape, np.uint8))[...] = \
                        tensor
                    header["has_tensor"] = True
                conn.send(("item", (slot, header, None, None)))
            else:  # no slot (a live source dropping under load), or a frame of another size: sent as a copy
                if slot is not None:
                    with free_cond:
                        free.append(slot)
                if slot is None and item.live:
                    source._count("dropped")  # the pipeline is behind: a live frame is dropped, as the queue would
                    continue
                conn.send(("item", (None, header, frame, tensor)))
            if time.monotonic() - last_stats > 1.0:
                conn.send(("stats", (source.stats(), quality and quality.stats())))
                last_stats = time.monotonic()
        # with the frames skipped after the last one delivered (a file whose end the quality check drops)
        conn.send(("end", (source.stats(), quality and quality.stats(), skipped)))
    except EdgepilotError as e:
        _send_quietly(conn, ("error", str(e)))
    except Exception as e:
        _send_quietly(conn, ("error", f"decoder process failed: {type(e).__name__}: {e}"))
    finally:
        if shm is not None:
            shm.close()
        conn.close()


def _take_slot(free: list[int], cond: threading.Condition, stop: threading.Event, live: bool) -> int | None:
    """A free slot: a file source waits for one (back-pressure); a live one takes none when all are in use."""
    with cond:
        while not free and not stop.is_set():
            if live:
                return None
            cond.wait(0.1)
        return free.pop() if free else None


def _fits(item: Item, layout) -> bool:
    if layout is None or item.frame is None:
        return False
    frame_shape, tensor_shape, tensor_dtype, _ = layout
    tensor = item.tensor
    tensor_ok = (tensor is None and tensor_shape is None) or (
        isinstance(tensor, np.ndarray) and tensor.shape == tuple(tensor_shape) and tensor.dtype.str == tensor_dtype)
    return item.frame.shape == tuple(frame_shape) and item.frame.dtype == np.uint8 and tensor_ok


def _serve_parent(address: str) -> None:
    """`python -m edgepilot.runtime.sources.decoder_child ADDRESS`: connect back and decode until told to stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the pipeline decides when to stop
    conn = Client(address, "AF_UNIX", authkey=bytes.fromhex(os.environ.pop(KEY_ENV)))
    _child_main(conn, *conn.recv())


def _send_quietly(conn, message) -> None:
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    _serve_parent(sys.argv[1])
