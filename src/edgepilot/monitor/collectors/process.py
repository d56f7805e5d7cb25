"""One process (by default this one): resident memory, open file descriptors, threads, CPU use."""
from __future__ import annotations

import os

import psutil

from edgepilot.monitor.readings import Collector, Reading, SourceUnavailable, reading


class ProcessCollector(Collector):
    name = "process"

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self._proc: psutil.Process | None = None

    def _process(self) -> psutil.Process:
        if self._proc is None:
            try:
                self._proc = psutil.Process(self.pid)
                self._proc.cpu_percent(None)  # starts psutil's window; the first real figure comes next call
            except psutil.NoSuchProcess as e:
                raise SourceUnavailable(f"no process with pid {self.pid}") from e
            except psutil.AccessDenied as e:
                raise SourceUnavailable(f"not allowed to read process {self.pid}") from e
        return self._proc

    def probe(self) -> tuple[bool, str]:
        try:
            p = self._process()
            return True, f"psutil: process {self.pid} ({p.name()})"
        except (SourceUnavailable, psutil.Error) as e:
            return False, str(e)

    def collect(self) -> list[Reading]:
        p = self._process()
        labels = {"pid": self.pid}
        try:
            with p.oneshot():
                out = [reading("process_rss_bytes", p.memory_info().rss, "B", "psutil", **labels),
                       reading("process_threads", p.num_threads(), "count", "psutil", **labels),
                       reading("process_cpu_percent", p.cpu_percent(None), "%", "psutil", **labels)]
                if hasattr(p, "num_fds"):  # POSIX only
                    out.append(reading("process_open_fds", p.num_fds(), "count", "psutil", **labels))
        except psutil.NoSuchProcess as e:
            self._proc = None
            raise SourceUnavailable(f"process {self.pid} has exited") from e
        except psutil.AccessDenied as e:
            raise SourceUnavailable(f"not allowed to read process {self.pid}") from e
        return out
