"""A run's log file: what third-party code prints (C/C++ on fds 1 and 2, Python prints, warnings, logging) goes there.

Converters and runtimes write straight to the file descriptors (TensorFlow's artifact dumps, MNN's
`getshape`, onnxruntime's coloured error lines), past anything Python's sys.stdout could intercept,
so the descriptors themselves are pointed at the log for the run. The caller keeps the terminal
through the file `run_log` yields (a copy of the original stdout).
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

_active: list[IO[bytes]] = []  # the open run log, while one is open


@contextmanager
def run_log(path: Path, verbose: bool = False) -> Iterator[IO[str]]:
    """Send fds 1 and 2 to `path` (appended) until the block ends; yield a text file on the real stdout.

    verbose: the same output is also copied to the terminal's stderr as it comes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in the finally below
    log.write(f"=== edgepilot run log, {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n".encode())
    reader, copier = (None, None)
    if verbose:  # a pipe whose reader writes both to the log and to the terminal
        reader, target = os.pipe()
        copier = threading.Thread(target=_tee, args=(reader, log, saved[2]), daemon=True)
        copier.start()
    else:
        target = log.fileno()
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        for fd in (1, 2):
            os.dup2(target, fd)
        if verbose:
            os.close(target)
        _active.append(log)
        yield terminal
    finally:
        _active.remove(log)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)  # also closes the pipe's last writers: the copier sees its end
        if copier is not None:
            copier.join(timeout=5)
            os.close(reader)
        for original in saved.values():
            os.close(original)
        terminal.close()
        log.close()


def section(title: str) -> None:
    """A heading in the open run log (before a pass, say), so its output can be told apart; no-op without one."""
    if _active:
        sys.stdout.flush()
        sys.stderr.flush()
        _active[-1].write(f"\n--- {title}\n".encode())


def _tee(reader: int, log: IO[bytes], terminal: int) -> None:
    while chunk := os.read(reader, 65536):
        log.write(chunk)
        os.write(terminal, chunk)
