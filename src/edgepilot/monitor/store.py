"""SQLite time series: raw points, per-minute rollups for older data, retention, source status, CSV/JSON export."""
from __future__ import annotations

import csv
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edgepilot.errors import ConfigError
from edgepilot.monitor.readings import Sample, SourceStatus

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, metric TEXT NOT NULL, labels TEXT NOT NULL,
    unit TEXT NOT NULL, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (series_id INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS points_by_series ON points (series_id, ts);
CREATE INDEX IF NOT EXISTS points_by_ts ON points (ts);
CREATE TABLE IF NOT EXISTS rollups (
    series_id INTEGER NOT NULL, ts REAL NOT NULL, mean REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (series_id, ts));
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY, available INTEGER NOT NULL, detail TEXT NOT NULL, panels TEXT NOT NULL, ts REAL NOT NULL);
"""


@dataclass(frozen=True)
class Series:
    key: str
    metric: str
    labels: dict[str, str]
    unit: str
    source: str
    ts: list[float]
    values: list[float]


class MetricStore:
    """One SQLite file. Raw points are kept for `raw_retention_s`, then folded into `bucket_s` rollups
    (mean/min/max/count) kept for `rollup_retention_s`. WAL mode lets `monitor report` read while a monitor writes."""

    def __init__(self, path: str | Path, *, raw_retention_s: float = 24 * 3600,
                 rollup_retention_s: float = 30 * 24 * 3600, bucket_s: float = 60.0) -> None:
        if raw_retention_s <= 0 or rollup_retention_s <= 0 or bucket_s <= 0:
            raise ConfigError("retention and bucket sizes must be positive")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last second, never corrupt the file
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path} is not a usable monitor database: {e}",
                              hint="pass another --db, or delete the file") from e
        self.raw_retention_s, self.rollup_retention_s, self.bucket_s = raw_retention_s, rollup_retention_s, bucket_s
        self._ids: dict[str, int] = dict(self.db.execute("SELECT key, id FROM series"))

    def _series_id(self, r) -> int:
        sid = self._ids.get(r.key)
        if sid is None:
            cur = self.db.execute(
                "INSERT INTO series (key, metric, labels, unit, source) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET source = excluded.source RETURNING id",
                (r.key, r.metric, json.dumps(r.label_dict, sort_keys=True), r.unit, r.source))
            sid = cur.fetchone()[0]
            self._ids[r.key] = sid
        return sid

    def write(self, sample: Sample) -> None:
        with self.db:
            self.db.executemany("INSERT INTO points (series_id, ts, value) VALUES (?, ?, ?)",
                                [(self._series_id(r), sample.ts, r.value) for r in sample.readings])
            self.db.executemany(
                "INSERT INTO sources (name, available, detail, panels, ts) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET available=excluded.available, detail=excluded.detail, "
                "panels=excluded.panels, ts=excluded.ts",
                [(s.name, int(s.available), s.detail, ",".join(s.panels), sample.ts) for s in sample.sources])

    def maintain(self, now: float | None = None) -> dict[str, int]:
        """Fold raw points past their retention into rollups, and drop rollups past theirs."""
        now = time.time() if now is None else now
        cutoff = now - self.raw_retention_s
        b = self.bucket_s
        with self.db:
            # merge into an existing bucket by weighting its mean with its count
            self.db.execute(
                """INSERT INTO rollups (series_id, ts, mean, min, max, n)
                   SELECT series_id, CAST(ts / ? AS INTEGER) * ?, AVG(value), MIN(value), MAX(value), COUNT(*)
                   FROM points WHERE ts < ? GROUP BY series_id, CAST(ts / ? AS INTEGER)
                   ON CONFLICT(series_id, ts) DO UPDATE SET
                     mean = (rollups.mean * rollups.n + excluded.mean * excluded.n) / (rollups.n + excluded.n),
                     min = MIN(rollups.min, excluded.min), max = MAX(rollups.max, excluded.max),
                     n = rollups.n + excluded.n""", (b, b, cutoff, b))
            folded = self.db.execute("DELETE FROM points WHERE ts < ?", (cutoff,)).rowcount
            dropped = self.db.execute("DELETE FROM rollups WHERE ts < ?", (now - self.rollup_retention_s,)).rowcount
        return {"folded": folded, "dropped": dropped}

    def series(self, metric: str | None = None, *, since: float | None = None, until: float | None = None,
               rollups: bool = True) -> list[Series]:
        """Every series (or one metric's), oldest first; a rolled-up bucket appears as its mean at the bucket start."""
        lo, hi = since if since is not None else float("-inf"), until if until is not None else float("inf")
        q = "SELECT id, key, metric, labels, unit, source FROM series" + (" WHERE metric = ?" if metric else "")
        out = []
        for sid, key, m, labels, unit, source in self.db.execute(q, (metric,) if metric else ()).fetchall():
            rows = []
            if rollups:
                rows += self.db.execute("SELECT ts, mean FROM rollups WHERE series_id = ? AND ts >= ? AND ts <= ?",
                                        (sid, lo, hi)).fetchall()
            rows += self.db.execute("SELECT ts, value FROM points WHERE series_id = ? AND ts >= ? AND ts <= ? "
                                    "ORDER BY ts", (sid, lo, hi)).fetchall()
            if rows:
                rows.sort()
                out.append(Series(key, m, json.loads(labels), unit, source, [r[0] for r in rows],
                                  [r[1] for r in rows]))
        return sorted(out, key=lambda s: s.key)

    def sources(self) -> list[SourceStatus]:
        return [SourceStatus(n, bool(a), d, tuple(p for p in panels.split(",") if p))
                for n, a, d, panels in self.db.execute("SELECT name, available, detail, panels FROM sources "
                                                       "ORDER BY name")]

    def time_range(self) -> tuple[float, float] | None:
        lo, hi = self.db.execute("SELECT MIN(ts), MAX(ts) FROM (SELECT ts FROM points UNION ALL "
                                 "SELECT ts FROM rollups)").fetchone()
        return None if lo is None else (lo, hi)

    def export(self, path: str | Path, fmt: str | None = None, *, since: float | None = None,
               until: float | None = None) -> int:
        """Write every point as CSV (ts, key, metric, labels, value, unit, source) or JSON; returns the row count."""
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".") or "csv").lower()
        if fmt not in ("csv", "json"):
            raise ConfigError(f"unknown export format {fmt!r}", hint="use csv or json")
        series = self.series(since=since, until=until)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = sum(len(s.ts) for s in series)
        if fmt == "csv":
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["ts", "key", "metric", "labels", "value", "unit", "source"])
                rows = sorted((t, s.key, s.metric, json.dumps(s.labels, sort_keys=True), v, s.unit, s.source)
                              for s in series for t, v in zip(s.ts, s.values))
                w.writerows(rows)
        else:
            path.write_text(json.dumps({
                "sources": [{"name": s.name, "available": s.available, "detail": s.detail} for s in self.sources()],
                "series": [{"key": s.key, "metric": s.metric, "labels": s.labels, "unit": s.unit, "source": s.source,
                            "points": [[t, v] for t, v in zip(s.ts, s.values)]} for s in series]}, indent=1))
        return n

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:
            pass
