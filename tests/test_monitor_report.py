"""The report: six panels as a PNG, unavailable panels saying why, real inference timings, and Prometheus gauges."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgepilot.model import Format, Model
from edgepilot.monitor.collectors.cpu import CpuCollector
from edgepilot.monitor.collectors.hwmon import HwmonPowerCollector
from edgepilot.monitor.collectors.inference import InferenceCollector, InferenceRecorder
from edgepilot.monitor.collectors.memory import MemoryCollector
from edgepilot.monitor.collectors.nvml import NvmlCollector
from edgepilot.monitor.collectors.thermal import ThermalCollector
from edgepilot.monitor.report import build_report
from edgepilot.monitor.sampler import Monitor
from edgepilot.monitor.store import MetricStore
from test_monitor_collectors import write

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_report_with_real_inference_and_sysfs_sensors(tmp_path, built):
    """CPU and memory from this machine, inference timed on a real model, temperature and power from sysfs files."""
    from edgepilot.engines import open_session

    sysfs = tmp_path / "sys"
    write(sysfs, "class/thermal/thermal_zone0/type", "soc-thermal")
    write(sysfs, "class/thermal/thermal_zone0/temp", "52000")
    write(sysfs, "class/hwmon/hwmon0/name", "ina219")
    write(sysfs, "class/hwmon/hwmon0/power1_input", "4000000")
    rec = InferenceRecorder()
    monitor = Monitor([CpuCollector(), MemoryCollector(), ThermalCollector(sysfs, use_psutil=False),
                       HwmonPowerCollector(sysfs), InferenceCollector(rec), NvmlCollector()],
                      store=MetricStore(tmp_path / "m.db"))
    b = built(Format.ONNX, "cnn")
    x = b.inputs[0]
    with open_session(Model.load(b.path), threads=1) as session:
        name = session.inputs[0].name
        for i in range(8):
            write(sysfs, "class/thermal/thermal_zone0/temp", str(52000 + 2500 * i))  # a board warming up
            write(sysfs, "class/hwmon/hwmon0/power1_input", str(4_000_000 + 1_000_000 * i))
            end = time.monotonic() + 0.15
            while time.monotonic() < end:
                t0 = time.perf_counter()
                session.run({name: x})
                rec.record(time.perf_counter() - t0, batch=x.shape[0])
            monitor.sample()
    monitor.close()
    png = tmp_path / "report.png"
    rep = build_report(MetricStore(tmp_path / "m.db"), png=png)
    assert _png_size(png) == (1620, 900)
    for panel in ("cpu", "memory", "temperature", "inference", "power"):
        assert rep.panels[panel].startswith("plotted"), (panel, rep.panels[panel])
    if not rep.panels["gpu"].startswith("plotted"):  # no GPU here: the panel says why instead of plotting
        assert rep.panels["gpu"].startswith("unavailable: ") and "nvml" in rep.panels["gpu"]
    temp = next(s for s in rep.stats if s.metric == "temperature_celsius")
    assert (temp.min, temp.max, temp.n) == (52.0, 69.5, 8)
    power = next(s for s in rep.stats if s.metric == "power_watts")
    assert power.mean == pytest.approx(7.5) and power.std == pytest.approx(np.std(np.arange(4, 12)))
    assert [a.panel for a in rep.advice if a.panel in ("temperature", "power")] == ["power"]  # 11 W > 10; 69.5 < 70
    lat = next(s for s in rep.stats if s.metric == "inference_latency_ms")
    assert 0 < lat.min <= lat.mean <= lat.max < 1000
    for title in ("CPU", "Memory", "GPU", "Temperature", "Inference time", "Power"):
        assert title in rep.text


def test_every_panel_unavailable_says_why(tmp_path):
    store = MetricStore(tmp_path / "m.db")
    monitor = Monitor([MemoryCollector(), ThermalCollector(tmp_path, use_psutil=False)], store=store)
    monitor.sample()
    monitor.close()
    rep = build_report(MetricStore(tmp_path / "m.db"), png=tmp_path / "r.png")
    assert rep.panels["memory"] == "plotted: 1 series"
    assert rep.panels["temperature"].startswith("unavailable: thermal: no readable thermal zone")
    assert rep.panels["power"] == "unavailable: no collector reads this quantity"
    assert "unavailable: thermal: no readable thermal zone" in rep.text
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC


def test_prometheus_gauges_for_every_collector(tmp_path):
    from prometheus_client import generate_latest

    from edgepilot.monitor.prometheus import build_registry

    write(tmp_path, "class/thermal/thermal_zone0/type", "cpu-thermal")
    write(tmp_path, "class/thermal/thermal_zone0/temp", "48250")
    rec = InferenceRecorder()
    rec.record(0.012)
    monitor = Monitor([CpuCollector(), MemoryCollector(), ThermalCollector(tmp_path, use_psutil=False),
                       InferenceCollector(rec), NvmlCollector()])
    text = generate_latest(build_registry(monitor)).decode()
    assert "# TYPE edgepilot_memory_percent gauge" in text
    assert 'edgepilot_temperature_celsius{sensor="cpu-thermal:0",source="sysfs:' in text
    assert "} 48.25" in text
    assert 'edgepilot_inference_latency_ms{source="runtime"} 12.0' in text
    assert 'edgepilot_source_available{source="memory"} 1.0' in text
    nvml_up = [ln for ln in text.splitlines() if ln.startswith('edgepilot_source_available{source="nvml"}')]
    assert nvml_up and nvml_up[0].endswith(("0.0", "1.0"))
    assert 'edgepilot_source_info{detail="' in text
    monitor.close()
