"""Sources read through OpenCV captures: video files, local cameras and network streams (RTSP, HTTP MJPEG)."""
from __future__ import annotations

import logging
import os
import threading
import time
from abc import abstractmethod
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from edgepilot.errors import InputError, UnavailableError
from edgepilot.runtime.item import Item
from edgepilot.runtime.sources.base import Source, _bgr, _cv2, _Reconnect, _SourceBase
from edgepilot.runtime.sources.hwdecode import Decoder, HwDecode, candidates, codec_of

log = logging.getLogger(__name__)

_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ENV_LOCK = threading.Lock()  # the FFmpeg options travel in a process-wide environment variable


def _redact(url: str) -> str:
    """The URL without user:password, for logs and ids."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


class _Decoded(BaseModel):
    # process: decode, check and preprocess in a child process; frames come back through shared memory
    decode: Literal["thread", "process"] = "thread"


class _HwDecoded(_Decoded):
    hw_decode: HwDecode = "auto"  # hardware decoder (hwdecode.py): auto tries what the machine has, else software
    # FFmpeg's decoding threads (software decoding). auto: what the pipeline's thread plan gives (1 when the stages
    # fill every core), FFmpeg's own choice outside a pipeline; 0: FFmpeg's own choice (one per core)
    decode_threads: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"


def _open_capture(target: str, decoder: Decoder, options: dict[str, str] | None = None, params=(),
                  threads: int | str = "auto"):
    """An opened cv2.VideoCapture of `target` through `decoder` (FFmpeg with `threads` decoding threads where that
    is a number above 0), or None."""
    cv2 = _cv2()
    if decoder.gstreamer:
        cap = cv2.VideoCapture(decoder.gstreamer, cv2.CAP_GSTREAMER)
    else:
        options, params = dict(options or {}), list(params)
        if decoder.ffmpeg_codec:
            options["video_codec"] = decoder.ffmpeg_codec
        if decoder.hw_acceleration:
            params += [cv2.CAP_PROP_HW_ACCELERATION, cv2.VIDEO_ACCELERATION_VAAPI]
        if isinstance(threads, int) and threads > 0:
            params += [cv2.CAP_PROP_N_THREADS, threads]
        if not options:
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        else:
            # FFmpeg reads its options from the environment when it opens, so the variable is set only around it
            with _ENV_LOCK:
                before = os.environ.get(_FFMPEG_OPTIONS)
                os.environ[_FFMPEG_OPTIONS] = "|".join(f"{k};{v}" for k, v in options.items())
                try:
                    cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
                finally:
                    if before is None:
                        del os.environ[_FFMPEG_OPTIONS]
                    else:
                        os.environ[_FFMPEG_OPTIONS] = before
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def _choose_decoder(source_id: str, request: HwDecode, target: str, software_cap, open_with, *,
                    rtsp_tcp: bool = True) -> tuple[Decoder, object]:
    """The decoder to use and a capture opened with it that has decoded a frame.

    `software_cap` is already open in software (its FourCC names the codec); `open_with(decoder)` opens another.
    """
    codec = codec_of(software_cap.get(_cv2().CAP_PROP_FOURCC))
    found, missing = candidates(request, target, codec, rtsp_tcp=rtsp_tcp)
    if request == "off" or (found and found[0].backend == "software"):
        if request == "auto" and missing:
            log.info("source %s: decoding %s in software (%s)", source_id, codec or "video", "; ".join(missing))
        return Decoder("software", "FFmpeg"), software_cap
    software_cap.release()
    if not found:
        raise UnavailableError(f"source {source_id}: hw_decode {request} is not available here: {'; '.join(missing)}",
                               hint="use hw_decode: auto (hardware where it works, else software) or off")
    failed = []
    for decoder in found:
        cap = open_with(decoder)
        if cap is not None and cap.grab():
            log.info("source %s: decoding %s with %s", source_id, codec or "video", decoder.describe())
            return decoder, cap
        if cap is not None:
            cap.release()
        failed.append(f"{decoder.describe()} decoded no frame")
        if decoder.backend != "software":
            log.warning("source %s: %s decoded no frame; trying the next decoder", source_id, decoder.describe())
    raise UnavailableError(f"source {source_id}: hw_decode {request}: {'; '.join(failed)}",
                           hint="use hw_decode: auto (hardware where it works, else software) or off")


class VideoSourceConfig(_SourceBase, _HwDecoded):
    type: Literal["video"] = "video"
    path: str
    loop: bool = False  # start over at the end, until stop()
    realtime: bool = False  # pace frames at the file's fps as a camera would; the source then counts as live
    start: int = Field(0, ge=0)  # first frame index
    stride: int = Field(1, ge=1)  # keep every stride-th frame
    resume: bool = False  # after a restart, start after the last frame a previous run delivered (same file)


class CameraSourceConfig(_Reconnect, _Decoded):
    type: Literal["camera"] = "camera"
    device: int | str = 0  # OpenCV index, or a device path such as /dev/video0
    max_retries: int | None = Field(None, ge=0)  # consecutive failed opens/reads before giving up; None: forever
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    fps: float | None = Field(None, gt=0)


class StreamSourceConfig(_Reconnect, _HwDecoded):
    type: Literal["stream"] = "stream"
    url: str  # rtsp://, rtsps://, or http(s):// serving MJPEG (multipart/x-mixed-replace)
    rtsp_tcp: bool = True  # RTSP over TCP: survives lossy links and NAT better than UDP
    max_retries: int | None = Field(None, ge=0)  # consecutive failed reopens before giving up; None: forever
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)  # a read that hangs this long counts as a lost connection
    reconnect_max_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if urlsplit(v).scheme.lower() not in ("rtsp", "rtsps", "http", "https"):
            raise ValueError("url must start with rtsp://, rtsps://, http:// or https://")
        return v


class VideoSource(Source):
    def __init__(self, cfg: VideoSourceConfig) -> None:
        self.cfg, self.path = cfg, Path(cfg.path)
        super().__init__(cfg.id or f"video:{self.path.stem}", live=cfg.realtime)
        if not self.path.is_file():
            raise InputError(f"video file not found: {self.path}", hint="check the path in the source config")
        cv2 = _cv2()
        self.decoder = Decoder("software", "FFmpeg")
        cap = self._open()
        try:
            if not cap.grab():  # opening only reads the header: a frame proves the codec decodes
                raise self._unreadable()
            self.decoder, cap = _choose_decoder(self.id, cfg.hw_decode, str(self.path), cap, lambda d: _open_capture(
                str(self.path), d, threads=cfg.decode_threads))
            self._set("decoder", self.decoder.describe())
            self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        self._first = cfg.start  # the first pass starts here; a resumed one later
        # Where the next frame is decoded: a callable giving an array of the frame's shape (the decoder process
        # gives a shared-memory slot, saving a copy per frame) or None (a new array); OpenCV allocates a new one
        # when the given array does not fit
        self.frame_buffer = lambda: None

    def _identity(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def position(self, item: Item) -> dict[str, Any] | None:
        return {**self._identity(), "frame_index": item.meta["frame_index"]} if self.cfg.resume else None

    def resume_after(self, position: dict[str, Any]) -> None:
        if {k: position.get(k) for k in ("path", "size", "mtime_ns")} != self._identity():
            log.info("source %s: %s changed since the last run; starting from the beginning", self.id, self.path)
            return
        self.start_after_frame(int(position["frame_index"]))
        log.info("source %s: resuming at frame %d", self.id, self._first)

    def start_after_frame(self, index: int) -> None:
        """The next pass starts after frame `index` (a resumed run, a restarted decoder process)."""
        self._first = max(self.cfg.start, index + self.cfg.stride)

    def _unreadable(self) -> InputError:
        return InputError(f"cannot read video {self.path}: OpenCV's FFmpeg backend does not decode it",
                          hint="check that the file plays (ffprobe), or re-encode it, e.g. to H.264 or MJPEG")

    def _open(self):
        cap = _open_capture(str(self.path), self.decoder, threads=self.cfg.decode_threads)
        if cap is None:
            raise self._unreadable()
        return cap

    def __iter__(self) -> Iterator[Item]:
        while not self._stop.is_set():
            yielded = yield from self._pass()
            if not yielded or not self.cfg.loop:
                return

    def _pass(self) -> Generator[Item, None, bool]:
        """One run through the file; False when it yielded nothing (so looping cannot spin)."""
        cap, yielded = self._open(), False
        cfg, period = self.cfg, 1.0 / self.fps if self.cfg.realtime and self.fps > 0 else 0.0
        first, self._first = self._first, cfg.start  # a loop's later passes start at `start`
        try:
            for _ in range(first):  # grab() rather than a seek: seeking lands on key frames in many codecs
                if not cap.grab():
                    return False
            index, t0 = first, time.monotonic()
            while not self._stop.is_set():
                ok, frame = cap.read(self.frame_buffer())
                if not ok:
                    # FFmpeg cannot resync past a damaged tail: a failed read ends the file, early or not
                    if index < self.frame_count:
                        self._count("read_errors")
                        self._set("ended_early", f"ended at frame {index} of {self.frame_count}")
                        log.warning("source %s: %s ended at frame %d of %d (truncated or damaged)", self.id,
                                    self.path, index, self.frame_count)
                    return yielded
                if period and not self._sleep(max(0.0, t0 + (index - first) * period - time.monotonic())):
                    return yielded
                yield self._item(time.time(), frame=_bgr(frame), path=str(self.path), frame_index=index)
                yielded = True
                for _ in range(cfg.stride - 1):
                    cap.grab()
                index += cfg.stride
            return yielded
        finally:
            cap.release()


class _CaptureSource(Source):
    """A live OpenCV capture that reopens with exponential back-off whenever a read fails, `max_retries` times in a
    row at most."""

    def __init__(self, id: str, cfg: CameraSourceConfig | StreamSourceConfig) -> None:
        super().__init__(id, live=True)
        self.cfg, self.max_retries = cfg, cfg.max_retries
        self._stats.update(reconnects=0, connected=False)

    @abstractmethod
    def _open(self): ...  # an opened cv2.VideoCapture, or None

    def probe(self) -> None:
        cap = self._open()
        if cap is None:
            raise UnavailableError(f"source {self.id}: cannot open it",
                                   hint="check that the device or server is reachable and sends video")
        try:
            if not cap.read()[0]:
                raise UnavailableError(f"source {self.id}: opened, but no frame came",
                                       hint="check that the device or server sends video")
        finally:
            cap.release()

    def __iter__(self) -> Iterator[Item]:
        return self._via_thread(self._frames)

    def _frames(self) -> Iterator[Item]:
        cap, delay, failed, ever, index = None, self.cfg.reconnect_initial_s, 0, False, 0
        try:
            while not self._stop.is_set():
                if cap is None:
                    cap = self._open()
                    if cap is None:
                        failed = self._failed(failed)
                        log.warning("source %s: cannot open it; retrying in %.1f s", self.id, delay)
                        if not self._sleep(delay):
                            return
                        delay = min(delay * 2, self.cfg.reconnect_max_s)
                        continue
                    if ever:
                        self._count("reconnects")
                        log.info("source %s: reconnected", self.id)
                    ever = True
                    self._set("connected", True)
                ok, frame = cap.read()
                ts = time.time()
                if not ok or frame is None:
                    self._count("read_errors")
                    failed = self._failed(failed)
                    log.warning("source %s: read failed (disconnected?); reopening in %.1f s", self.id, delay)
                    cap.release()
                    cap = None
                    self._set("connected", False)
                    if not self._sleep(delay):
                        return
                    delay = min(delay * 2, self.cfg.reconnect_max_s)
                    continue
                delay, failed = self.cfg.reconnect_initial_s, 0  # only frames prove the link is healthy again
                yield self._item(ts, frame=_bgr(frame), frame_index=index, **self._meta())
                index += 1
        finally:
            if cap is not None:
                cap.release()
            self._set("connected", False)

    def _failed(self, failed: int) -> int:
        """One more attempt that brought no frame; UnavailableError once they exceed max_retries."""
        failed += 1
        if self.max_retries is not None and failed > self.max_retries:
            raise UnavailableError(f"source {self.id}: no frames after {failed} tries",
                                   hint="check that the device or server is reachable and sends video")
        return failed

    def _meta(self) -> dict[str, Any]:
        return {}


class CameraSource(_CaptureSource):
    def __init__(self, cfg: CameraSourceConfig) -> None:
        dev = cfg.device
        self.device: int | str = int(dev) if isinstance(dev, str) and dev.isdigit() else dev
        super().__init__(cfg.id or f"camera:{self.device}", cfg)

    def _open(self):
        cv2 = _cv2()
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            return None
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
                            (cv2.CAP_PROP_FPS, self.cfg.fps)):
            if value:
                cap.set(prop, value)  # a request: drivers round to the modes they have
        return cap

    def _meta(self) -> dict[str, Any]:
        return {"device": str(self.device)}


class StreamSource(_CaptureSource):
    def __init__(self, cfg: StreamSourceConfig) -> None:
        self.url, self.decoder = cfg.url, None
        parts = urlsplit(_redact(cfg.url))
        super().__init__(cfg.id or f"stream:{parts.netloc}{parts.path}", cfg)

    def _open(self):
        cv2 = _cv2()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout_s * 1000)]
        options = {}
        if urlsplit(self.url).scheme.lower().startswith("rtsp"):
            options["rtsp_transport"] = "tcp" if self.cfg.rtsp_tcp else "udp"

        def open_with(decoder: Decoder):
            return _open_capture(self.url, decoder, options, params, self.cfg.decode_threads)

        if self.decoder is not None:
            return open_with(self.decoder)
        cap = open_with(Decoder("software", "FFmpeg"))
        if cap is not None:  # the first connection chooses the decoder, from the codec the stream carries
            self.decoder, cap = _choose_decoder(self.id, self.cfg.hw_decode, self.url, cap, open_with,
                                                rtsp_tcp=self.cfg.rtsp_tcp)
            self._set("decoder", self.decoder.describe())
        return cap

    def _meta(self) -> dict[str, Any]:
        return {"url": _redact(self.url)}
