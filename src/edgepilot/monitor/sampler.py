"""The monitor loop: probe every collector once, then sample at an interval into a store and the alert engine."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from edgepilot.monitor.readings import Collector, Reading, Sample, SourceStatus, SourceUnavailable

log = logging.getLogger(__name__)


class Monitor:
    """Runs collectors. A failing collector is marked unavailable with its reason and retried later, never fatal."""

    def __init__(self, collectors: Iterable[Collector] | None = None, *, store=None, alerts=None) -> None:
        if collectors is None:
            from edgepilot.monitor.collectors import default_collectors

            collectors = default_collectors()
        self.collectors = list(collectors)
        self.store = store
        self.alerts = alerts
        self.latest: Sample | None = None
        self._status: dict[str, SourceStatus] = {}
        self._next_try: dict[str, float] = {}
        self._lock = threading.Lock()  # a Prometheus scrape may sample from the server's thread
        for c in self.collectors:
            try:
                ok, detail = c.probe()
            except Exception as e:  # a probe must never raise; one that does is a bug in that collector
                log.warning("probing %s failed: %s", c.name, e)
                ok, detail = False, f"probe failed: {e}"
            self._set(c, ok, detail)

    def _set(self, c: Collector, ok: bool, detail: str) -> None:
        prev = self._status.get(c.name)
        if prev is not None and prev.available != ok:
            log.info("source %s is now %s: %s", c.name, "available" if ok else "unavailable", detail)
        self._status[c.name] = SourceStatus(c.name, ok, detail, c.panels)
        self._next_try[c.name] = 0.0 if ok else time.monotonic() + c.retry_s

    def fresh(self, max_age_s: float = 2.0) -> Sample:
        """The latest sample when it is younger than `max_age_s` (the monitor loop is running), else a new one."""
        s = self.latest
        return s if s is not None and time.time() - s.ts <= max_age_s else self.sample()

    def statuses(self) -> list[SourceStatus]:
        return [st for c in self.collectors for st in (self._status[c.name], *c.extra_statuses())]

    def sample(self) -> Sample:
        """Read every available collector once (and retry unavailable ones whose time has come)."""
        with self._lock:
            now = time.monotonic()
            readings: list[Reading] = []
            for c in self.collectors:
                st = self._status[c.name]
                if not st.available and now < self._next_try[c.name]:
                    continue
                try:
                    got = c.collect()
                except SourceUnavailable as e:
                    self._set(c, False, str(e))
                    continue
                except Exception as e:  # an unexpected failure in one source must not stop the others
                    log.warning("collector %s failed: %s", c.name, e, exc_info=log.isEnabledFor(logging.DEBUG))
                    self._set(c, False, f"{type(e).__name__}: {e}")
                    continue
                if not st.available:
                    self._set(c, True, "available again")
                readings.extend(got)
            sample = Sample(time.time(), readings, self.statuses())
            self.latest = sample
        if self.store is not None:
            self.store.write(sample)
        if self.alerts is not None:
            self.alerts.evaluate(sample)
        return sample

    def run(self, *, interval_s: float = 1.0, duration_s: float | None = None,
            on_sample: Callable[[Sample], None] | None = None, stop: threading.Event | None = None) -> int:
        """Sample every `interval_s` (on a fixed cadence, not drifting) until `duration_s` or `stop`."""
        stop = stop or threading.Event()
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            sample = self.sample()
            n += 1
            if on_sample is not None:
                on_sample(sample)
            if self.store is not None and n % 60 == 0:
                self.store.maintain()
            next_at = start + n * interval_s
            if duration_s is not None and next_at - start > duration_s + 1e-9:
                break
            stop.wait(max(0.0, next_at - time.monotonic()))
        return n

    def close(self) -> None:
        for c in self.collectors:
            try:
                c.close()
            except Exception as e:  # closing is best effort
                log.debug("closing %s: %s", c.name, e)
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
