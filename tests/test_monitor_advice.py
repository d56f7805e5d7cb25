"""Advice fires when a metric goes over its threshold: a real CPU burn, and recorded readings for the rest."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from edgepilot.errors import ConfigError
from edgepilot.monitor.advisor import Thresholds, advise, stats_of, text_report
from edgepilot.monitor.collectors.cpu import CpuCollector
from edgepilot.monitor.collectors.inference import InferenceCollector, InferenceRecorder
from edgepilot.monitor.collectors.memory import MemoryCollector
from edgepilot.monitor.readings import SourceStatus
from edgepilot.monitor.report import build_report
from edgepilot.monitor.sampler import Monitor
from edgepilot.monitor.store import MetricStore

BURN = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"


def test_cpu_burn_fires_cpu_advice(tmp_path):
    """Busy loops on every core in subprocesses drive the measured CPU over 80 %; the advisor says so."""
    store = MetricStore(tmp_path / "m.db")
    monitor = Monitor([CpuCollector(), MemoryCollector()], store=store)
    burners = [subprocess.Popen([sys.executable, "-c", BURN, "6"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(1.0)  # the interpreters start before the window opens
        monitor.sample()
        monitor.run(interval_s=0.5, duration_s=2.5)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    monitor.close()
    rep = build_report(MetricStore(tmp_path / "m.db"))
    cpu = next(s for s in rep.stats if s.key == "cpu_percent")
    assert cpu.max > 80, cpu
    fired = [a for a in rep.advice if a.panel == "cpu"]
    assert [a.key for a in fired] == ["cpu_percent"]  # the total, not one line per core
    assert fired[0].threshold == 80 and "optimise" in fired[0].message
    assert "WARNING: CPU" in rep.text
    assert not [a for a in rep.advice if a.panel == "memory"]  # memory stayed under 85 %


def test_idle_machine_gets_no_cpu_advice_at_a_high_threshold(tmp_path):
    store = MetricStore(tmp_path / "m.db")
    monitor = Monitor([CpuCollector()], store=store)
    monitor.sample()
    monitor.run(interval_s=0.2, duration_s=0.6)
    monitor.close()
    rep = build_report(MetricStore(tmp_path / "m.db"), thresholds=Thresholds(cpu_percent=100.5))
    assert rep.advice == [] and "no threshold exceeded" in rep.text


def test_recorded_readings_drive_every_threshold():
    series = {
        "memory_percent": ("memory_percent", {}, "%", [70, 88, 91, 80]),
        "temperature_celsius{sensor=soc}": ("temperature_celsius", {"sensor": "soc"}, "°C", [65, 72, 74]),
        "temperature_celsius{sensor=board}": ("temperature_celsius", {"sensor": "board"}, "°C", [40, 41]),
        "inference_latency_ms": ("inference_latency_ms", {}, "ms", [12, 18, 25, 31]),
        "power_watts{rail=VDD_IN}": ("power_watts", {"rail": "VDD_IN"}, "W", [6.5, 11.2, 7.0]),
        "gpu_util_percent{gpu=0}": ("gpu_util_percent", {"gpu": "0"}, "%", [99, 100]),  # no GPU threshold
    }
    stats = [stats_of(k, m, labels, u, "recorded", v) for k, (m, labels, u, v) in series.items()]
    advice = advise(stats, {k: v[3] for k, v in series.items()}, Thresholds())
    assert {a.key for a in advice} == {"memory_percent", "temperature_celsius{sensor=soc}", "inference_latency_ms",
                                       "power_watts{rail=VDD_IN}"}
    mem = next(a for a in advice if a.panel == "memory")
    assert mem.max == 91 and mem.fraction_over == 0.5 and mem.threshold == 85
    inf = next(a for a in advice if a.panel == "inference")
    assert inf.fraction_over == 0.5 and "hardware accelerator" in inf.message
    text = text_report(stats, advice, [SourceStatus("nvml", False, "no driver", ("gpu",))])
    assert "mean 21.50" in text and "std" in text and "min 12.00" in text and "max 31.00" in text
    assert text.count("WARNING") == 4


def test_inference_advice_from_a_real_recorder(tmp_path):
    rec = InferenceRecorder()
    store = MetricStore(tmp_path / "m.db")
    monitor = Monitor([InferenceCollector(rec)], store=store)
    for latency_ms in (8, 9, 30, 35):  # what a runtime reports after each call
        rec.record(latency_ms / 1000)
    monitor.sample()
    monitor.close()
    rep = build_report(MetricStore(tmp_path / "m.db"), thresholds=Thresholds(inference_latency_ms=15))
    assert [a.panel for a in rep.advice] == ["inference"]
    assert rep.panels["inference"] == "plotted: 1 series"


def test_thresholds_file_and_overrides(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("cpu_percent: 60\ntemperature_celsius: 55\n")
    t = Thresholds.load(f, power_watts=5, memory_percent=None)
    assert (t.cpu_percent, t.temperature_celsius, t.power_watts, t.memory_percent) == (60, 55, 5, 85)
    f.write_text("cpu: 60\n")
    with pytest.raises(ConfigError, match=r"t.yaml: field cpu: Extra inputs"):
        Thresholds.load(f)
    f.write_text("cpu_percent: -3\n")
    with pytest.raises(ConfigError, match="cpu_percent"):
        Thresholds.load(f)
