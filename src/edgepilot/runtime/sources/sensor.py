"""Line-based sensors as a source: numeric lines from a CSV/text file, a FIFO or a serial tty."""
from __future__ import annotations

import errno
import logging
import os
import select
import stat
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepilot.errors import InputError
from edgepilot.runtime.item import Item
from edgepilot.runtime.sources.base import Source, _Reconnect

log = logging.getLogger(__name__)

class SensorSourceConfig(_Reconnect):
    type: Literal["sensor"] = "sensor"
    path: str  # a CSV/text file, a FIFO, or a serial tty such as /dev/ttyUSB0
    fields: list[str] | None = None  # column names; None: the first line is a header (or c0, c1 ... if numeric)
    delimiter: str = Field(",", min_length=1)  # whitespace: any run of blanks
    follow: bool = False  # tail a growing file; keep reading a tty/FIFO across hang-ups until stop()
    baudrate: int | None = Field(None, gt=0)  # serial device: set raw mode at this speed
    timestamp_field: str | None = None  # epoch seconds or ISO 8601 in this column becomes the item's ts


def _configure_serial(fd: int, baudrate: int) -> None:
    """Raw 8N1 at `baudrate`, without pyserial: what a microcontroller printing lines expects."""
    import termios
    import tty

    speed = getattr(termios, f"B{baudrate}", None)
    if speed is None:
        raise InputError(f"unsupported baud rate {baudrate}", hint="use a standard rate such as 9600 or 115200")
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[2] = (attrs[2] | termios.CLOCAL | termios.CREAD) & ~termios.CSTOPB  # no modem control lines, 1 stop bit
    attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class SensorSource(Source):
    """Numeric lines: CSV with or without a header, `name=value` pairs, from a file, a FIFO or a serial tty."""

    def __init__(self, cfg: SensorSourceConfig) -> None:
        self.cfg, self.path = cfg, Path(cfg.path)
        if not self.path.exists():
            raise InputError(f"sensor input not found: {self.path}", hint="check the path (a file, FIFO or tty)")
        mode = self.path.stat().st_mode
        self._device = stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)
        if cfg.baudrate and not stat.S_ISCHR(mode):
            raise InputError(f"{self.path} is not a serial device", hint="drop `baudrate` for a file or FIFO")
        super().__init__(cfg.id or f"sensor:{self.path.name}", live=cfg.follow or self._device)
        self._fields = list(cfg.fields) if cfg.fields else None
        self._first = True

    def __iter__(self) -> Iterator[Item]:
        lines = self._device_lines() if self._device else self._file_lines()
        for number, raw in enumerate(lines, 1):
            text = raw.decode("utf-8", "replace").strip()
            if not text or text.startswith("#"):
                continue
            try:
                parsed = self._parse(text)
            except ValueError as e:
                self._skip(f"{self.path} line {number}: {e}: {text[:80]!r}")
                continue
            if parsed is not None:
                values, ts = parsed
                yield self._item(ts if ts is not None else time.time(), values=values, path=str(self.path),
                                 line=number)

    def _parse(self, text: str) -> tuple[dict[str, float], float | None] | None:
        delim = self.cfg.delimiter
        cells = [c.strip() for c in (text.split() if delim.isspace() else text.split(delim))]
        first, self._first = self._first, False
        if all("=" in c for c in cells):
            named = dict(c.split("=", 1) for c in cells)
        else:
            if self._fields is None:
                if not all(_is_number(c) for c in cells):
                    self._fields = cells  # the header
                    return None
                self._fields = [f"c{i}" for i in range(len(cells))]
            if first and cells == self._fields:
                return None  # a header repeating the configured names
            if len(cells) != len(self._fields):
                raise ValueError(f"{len(cells)} columns, expected {len(self._fields)}")
            named = dict(zip(self._fields, cells))
        ts = None
        if self.cfg.timestamp_field and self.cfg.timestamp_field in named:
            ts = _timestamp(named.pop(self.cfg.timestamp_field).strip())
        values = {}
        for k, v in named.items():
            try:
                values[k.strip()] = float(v)
            except ValueError:
                raise ValueError(f"{k.strip()}={v.strip()!r} is not a number") from None
        if not values:
            raise ValueError("no values")
        return values, ts

    def _file_lines(self) -> Iterator[bytes]:
        f, partial = open(self.path, "rb"), b""
        try:
            while not self._stop.is_set():
                chunk = f.readline()
                if chunk.endswith(b"\n"):
                    yield partial + chunk
                    partial = b""
                    continue
                partial += chunk  # a line still being written: wait for its end
                if not self.cfg.follow:
                    if partial:
                        yield partial
                    return
                if self._replaced(f):
                    log.info("source %s: %s was rotated or truncated; reading it from the start", self.id, self.path)
                    f.close()
                    f, partial, self._first = open(self.path, "rb"), b"", True  # it may start with its header
                elif not self._sleep(0.1):
                    return
        finally:
            f.close()

    def _replaced(self, f) -> bool:
        """A log rotation put a new file under the name, or the file was truncated below what was read."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # rotated away and not re-created yet: keep the old one
        return st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell()

    def _device_lines(self) -> Iterator[bytes]:
        delay, got_any = self.cfg.reconnect_initial_s, False
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as e:
                if not self.cfg.follow:
                    raise InputError(f"cannot open {self.path}: {e.strerror}", hint="check the device") from e
                log.warning("source %s: cannot open %s (%s); retrying in %.1f s", self.id, self.path, e.strerror,
                            delay)
                if not self._sleep(delay):
                    return
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            buf, is_tty = b"", os.isatty(fd)  # asked now: after a hang-up isatty() answers False
            try:
                if self.cfg.baudrate and is_tty:
                    _configure_serial(fd, self.cfg.baudrate)
                while not self._stop.is_set():
                    if not select.select([fd], [], [], 0.2)[0]:
                        continue
                    try:
                        chunk = os.read(fd, 4096)
                    except BlockingIOError:
                        continue
                    if not chunk and is_tty:
                        raise OSError(errno.EIO, "hang-up")  # no data reads as EAGAIN on a tty: 0 is a hang-up
                    if not chunk:
                        # a FIFO with no writer: before any data, one has not come yet; after, it hung up
                        if got_any and not self.cfg.follow:
                            return
                        if not self._sleep(0.2):
                            return
                        continue
                    got_any, delay = True, self.cfg.reconnect_initial_s
                    *lines, buf = (buf + chunk).split(b"\n")
                    yield from (line + b"\n" for line in lines)
            except OSError as e:  # EIO/ENXIO: the serial adapter was unplugged or the pty closed
                self._count("read_errors")
                if not self.cfg.follow:
                    log.warning("source %s: %s hung up (%s)", self.id, self.path, e.strerror)
                    return
                log.warning("source %s: %s hung up (%s); reopening in %.1f s", self.id, self.path, e.strerror, delay)
                if not self._sleep(delay):
                    return
                delay = min(delay * 2, self.cfg.reconnect_max_s)
            finally:
                os.close(fd)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"timestamp {text!r} is neither epoch seconds nor ISO 8601") from None
