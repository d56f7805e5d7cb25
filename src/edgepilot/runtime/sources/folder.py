"""An image folder as a source: read once in order, or watched for new files until stop()."""
from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from edgepilot.errors import InputError
from edgepilot.runtime.item import Item
from edgepilot.runtime.sources.base import Source, _decode_image, _SourceBase

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"})


class FolderSourceConfig(_SourceBase):
    type: Literal["folder"] = "folder"
    path: str
    pattern: str = "*"  # glob on file names; only image suffixes are read
    watch: bool = False  # keep polling for new files until stop()
    poll_s: float = Field(0.5, gt=0)  # a new file is read once its size and mtime held still across one poll
    sort: Literal["name", "mtime"] = "name"
    resume: bool = False  # after a restart, start after the last file a previous run delivered (not with watch)

    @model_validator(mode="after")
    def _resume_once(self) -> FolderSourceConfig:
        if self.resume and self.watch:
            raise ValueError("resume reads a folder once, after where the last run stopped: not with watch")
        return self


class FolderSource(Source):
    def __init__(self, cfg: FolderSourceConfig) -> None:
        self.cfg, self.path = cfg, Path(cfg.path)
        super().__init__(cfg.id or f"folder:{self.path.name}", live=cfg.watch)
        if not self.path.is_dir():
            raise InputError(f"image folder not found: {self.path}", hint="check the path in the source config")
        self._after: tuple | None = None  # the sort key of the last file a previous run delivered

    def _key(self, path: Path, mtime_ns: int) -> tuple:
        return (path.name,) if self.cfg.sort == "name" else (mtime_ns, path.name)

    def position(self, item: Item) -> dict[str, Any] | None:
        if not self.cfg.resume:
            return None
        path = Path(item.meta["path"])
        return {"name": path.name, "mtime_ns": item.meta["mtime_ns"]}

    def resume_after(self, position: dict[str, Any]) -> None:
        self._after = self._key(Path(position["name"]), int(position["mtime_ns"]))

    def _listing(self) -> list[tuple[Path, os.stat_result]]:
        found = []
        try:
            entries = list(os.scandir(self.path))
        except OSError as e:
            self._skip(f"cannot list {self.path}: {e.strerror}", "read_errors", an_input=False)
            return []
        for e in entries:
            name = e.name
            # a writer's temporary names (x.jpg.part, .x.jpg) are not images yet
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not fnmatch.fnmatch(name, self.cfg.pattern):
                continue
            try:
                st = e.stat()
            except OSError:
                continue  # gone between the listing and the stat
            if stat.S_ISREG(st.st_mode):
                found.append((Path(e.path), st))
        key = (lambda f: f[0].name) if self.cfg.sort == "name" else (lambda f: (f[1].st_mtime_ns, f[0].name))
        return sorted(found, key=key)

    def _read(self, path: Path, mtime_ns: int) -> Item | None:
        ts = time.time()
        try:
            data = path.read_bytes()
        except OSError as e:
            self._skip(f"cannot read {path}: {e.strerror}", "read_errors")
            return None
        try:
            frame = _decode_image(data)
        except ValueError:
            self._skip(f"{path} is not a readable image")
            return None
        return self._item(ts, frame=frame, path=str(path), mtime_ns=mtime_ns)

    def __iter__(self) -> Iterator[Item]:
        if not self.cfg.watch:
            for path, st in self._listing():
                if self._stop.is_set():
                    return
                if self._after is not None and self._key(path, st.st_mtime_ns) <= self._after:
                    continue
                if (item := self._read(path, st.st_mtime_ns)) is not None:
                    yield item
            return
        done: dict[str, tuple[int, int]] = {}  # read (or failed) files and their size/mtime at that moment
        last: dict[str, tuple[int, int]] = {}  # what the previous poll saw
        failed: set[str] = set()
        while not self._stop.is_set():
            listing, seen = self._listing(), {}
            for path, st in listing:
                sig = (st.st_size, st.st_mtime_ns)
                seen[path.name] = sig
                # read once a file held still across a poll; a failed one is retried only if it changes
                if path.name in done and (done[path.name] == sig or path.name not in failed):
                    continue
                if last.get(path.name) != sig or st.st_size == 0:
                    continue
                done[path.name] = sig
                item = self._read(path, st.st_mtime_ns)
                if item is None:
                    failed.add(path.name)
                    continue
                failed.discard(path.name)
                yield item
                if self._stop.is_set():
                    return
            last = seen
            done = {k: v for k, v in done.items() if k in seen}  # a consumer may delete what it has processed
            if not self._sleep(self.cfg.poll_s):
                return
