"""The SQLite history: writes, queries, rollups and retention, source status, CSV/JSON export."""
from __future__ import annotations

import csv
import json

import pytest

from edgepilot.errors import ConfigError
from edgepilot.monitor.readings import Sample, SourceStatus, reading
from edgepilot.monitor.store import MetricStore

T0 = 1_699_999_980.0  # a whole minute, so one-minute buckets line up with the test
SOURCES = [SourceStatus("cpu", True, "psutil", ("cpu",)), SourceStatus("rapl", False, "no powercap", ("power",))]


def fill(store: MetricStore, seconds: int, step: float = 1.0) -> None:
    for i in range(int(seconds / step)):
        ts = T0 + i * step
        store.write(Sample(ts, [reading("cpu_percent", i % 100, "%", "psutil"),
                                reading("cpu_percent", 50, "%", "psutil", core=0),
                                reading("temperature_celsius", 40 + i % 10, "°C", "sysfs", sensor="soc")], SOURCES))


def test_write_and_query(tmp_path):
    s = MetricStore(tmp_path / "m.db")
    fill(s, 10)
    series = {x.key: x for x in s.series()}
    assert set(series) == {"cpu_percent", "cpu_percent{core=0}", "temperature_celsius{sensor=soc}"}
    cpu = series["cpu_percent"]
    assert cpu.values == [float(i) for i in range(10)] and cpu.ts[0] == T0 and cpu.unit == "%"
    assert series["temperature_celsius{sensor=soc}"].labels == {"sensor": "soc"}
    assert [x.key for x in s.series("cpu_percent", since=T0 + 5)] == ["cpu_percent", "cpu_percent{core=0}"]
    assert s.series("cpu_percent", since=T0 + 5)[0].values == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert s.time_range() == (T0, T0 + 9)
    assert {x.name: (x.available, x.detail) for x in s.sources()} == {"cpu": (True, "psutil"),
                                                                      "rapl": (False, "no powercap")}
    s.close()
    reopened = MetricStore(tmp_path / "m.db")  # history survives a restart
    assert len(reopened.series("cpu_percent")[0].values) == 10


def test_rollups_and_retention(tmp_path):
    s = MetricStore(tmp_path / "m.db", raw_retention_s=120, rollup_retention_s=3600, bucket_s=60)
    fill(s, 600)  # ten minutes at 1 s
    now = T0 + 600
    got = s.maintain(now)
    assert got["folded"] == 3 * 480  # everything older than two minutes, for three series
    cpu = s.series("cpu_percent")[0]
    # 8 one-minute buckets (each the mean of its 60 raw points) then 120 raw points
    assert len(cpu.values) == 8 + 120
    assert cpu.values[0] == pytest.approx(sum(range(60)) / 60)
    rows = s.db.execute("SELECT min, max, n FROM rollups r JOIN series s ON s.id = r.series_id "
                        "WHERE s.key = 'cpu_percent' ORDER BY r.ts").fetchall()
    assert rows[0] == (0, 59, 60)
    assert s.series("cpu_percent", rollups=False)[0].ts[0] == T0 + 480
    # a second pass later merges into the same buckets instead of duplicating them
    s.maintain(now + 60)
    assert len(s.series("cpu_percent")[0].values) == 9 + 60
    s.maintain(now + 3600 + 600)  # everything past the rollup retention is gone
    assert s.series() == []


def test_export_csv_and_json(tmp_path):
    s = MetricStore(tmp_path / "m.db")
    fill(s, 5)
    assert s.export(tmp_path / "out.csv") == 15
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == 15 and rows[0].keys() == {"ts", "key", "metric", "labels", "value", "unit", "source"}
    soc = [r for r in rows if r["key"] == "temperature_celsius{sensor=soc}"]
    assert [float(r["value"]) for r in soc] == [40, 41, 42, 43, 44] and json.loads(soc[0]["labels"]) == {
        "sensor": "soc"}
    assert s.export(tmp_path / "out.json", since=T0 + 3) == 6
    data = json.loads((tmp_path / "out.json").read_text())
    assert {x["key"]: len(x["points"]) for x in data["series"]}["cpu_percent"] == 2
    assert {x["name"] for x in data["sources"]} == {"cpu", "rapl"}
    with pytest.raises(ConfigError, match="unknown export format"):
        s.export(tmp_path / "out.xml")


def test_not_a_database(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a usable monitor database"):
        MetricStore(bad)
