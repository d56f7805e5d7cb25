"""Network: bytes and packets per second, errors and drops, per interface (psutil, /proc/net/dev)."""
from __future__ import annotations

import time

import psutil

from edgepilot.monitor.readings import Collector, RateTracker, Reading, reading


class NetworkCollector(Collector):
    name = "network"

    def __init__(self, include_loopback: bool = False) -> None:
        self._rates = RateTracker()
        self._loopback = include_loopback

    def _counters(self) -> dict:
        nics = psutil.net_io_counters(pernic=True)
        return {n: c for n, c in nics.items() if self._loopback or n != "lo"}

    def probe(self) -> tuple[bool, str]:
        nics = self._counters()
        if not nics:
            return False, "no network interface other than loopback"
        return True, f"psutil:/proc/net/dev, interfaces {', '.join(sorted(nics))}"

    def collect(self) -> list[Reading]:
        out: list[Reading] = []
        now = time.monotonic()
        src = "psutil:/proc/net/dev"
        for nic, c in self._counters().items():
            for name, counter, unit in (("net_recv_bytes_per_s", c.bytes_recv, "B/s"),
                                        ("net_sent_bytes_per_s", c.bytes_sent, "B/s"),
                                        ("net_recv_packets_per_s", c.packets_recv, "1/s"),
                                        ("net_sent_packets_per_s", c.packets_sent, "1/s")):
                r = self._rates.rate(f"{nic}:{name}", counter, now)
                if r is not None:
                    out.append(reading(name, r, unit, src, nic=nic))
            out += [reading("net_errors_total", c.errin + c.errout, "count", src, nic=nic),
                    reading("net_drops_total", c.dropin + c.dropout, "count", src, nic=nic)]
        return out
