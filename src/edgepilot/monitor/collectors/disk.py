"""Disk: usage of each mounted filesystem and I/O rates from /proc/diskstats (psutil)."""
from __future__ import annotations

import time

import psutil

from edgepilot.monitor.readings import Collector, RateTracker, Reading, reading


class DiskCollector(Collector):
    name = "disk"
    _MOUNTS_TTL_S = 60.0  # mounts rarely change; re-reading /proc/mounts every second is wasted work

    def __init__(self) -> None:
        self._rates = RateTracker()
        self._mounts: list[str] = []
        self._mounts_at = float("-inf")

    def _mountpoints(self) -> list[str]:
        now = time.monotonic()
        if now - self._mounts_at > self._MOUNTS_TTL_S:
            seen, mounts = set(), []
            for p in psutil.disk_partitions(all=False):
                if p.device not in seen:  # bind mounts of one device would repeat its numbers
                    seen.add(p.device)
                    mounts.append(p.mountpoint)
            self._mounts, self._mounts_at = mounts, now
        return self._mounts

    def probe(self) -> tuple[bool, str]:
        io = psutil.disk_io_counters()
        return True, f"psutil: statvfs of {len(self._mountpoints())} filesystem(s)" + (
            ", /proc/diskstats" if io is not None else "; no I/O counters (no block devices visible)")

    def collect(self) -> list[Reading]:
        out: list[Reading] = []
        for mount in self._mountpoints():
            try:
                u = psutil.disk_usage(mount)
            except OSError:
                continue
            out += [reading("disk_used_bytes", u.used, "B", "psutil:statvfs", mount=mount),
                    reading("disk_total_bytes", u.total, "B", "psutil:statvfs", mount=mount),
                    reading("disk_percent", u.percent, "%", "psutil:statvfs", mount=mount)]
        io = psutil.disk_io_counters()
        if io is not None:
            now = time.monotonic()
            src = "psutil:/proc/diskstats"
            for name, counter, unit in (("disk_read_bytes_per_s", io.read_bytes, "B/s"),
                                        ("disk_write_bytes_per_s", io.write_bytes, "B/s"),
                                        ("disk_read_ops_per_s", io.read_count, "1/s"),
                                        ("disk_write_ops_per_s", io.write_count, "1/s")):
                r = self._rates.rate(name, counter, now)
                if r is not None:
                    out.append(reading(name, r, unit, src))
        return out
