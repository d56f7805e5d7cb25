"""Collectors: real values from this machine, honest reasons for absent sources, and sysfs layouts built in tmp_path."""
from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from edgepilot.monitor.collectors import default_collectors
from edgepilot.monitor.collectors.battery import BatteryCollector
from edgepilot.monitor.collectors.cpu import CpuCollector
from edgepilot.monitor.collectors.disk import DiskCollector
from edgepilot.monitor.collectors.hwmon import HwmonPowerCollector
from edgepilot.monitor.collectors.inference import InferenceCollector, InferenceRecorder
from edgepilot.monitor.collectors.jetson_sysfs import JetsonSysfsCollector
from edgepilot.monitor.collectors.memory import MemoryCollector
from edgepilot.monitor.collectors.network import NetworkCollector
from edgepilot.monitor.collectors.nvml import NvmlCollector
from edgepilot.monitor.collectors.process import ProcessCollector
from edgepilot.monitor.collectors.rapl import RaplCollector
from edgepilot.monitor.collectors.raspberrypi import VcgencmdCollector
from edgepilot.monitor.collectors.tegrastats import TegrastatsCollector
from edgepilot.monitor.collectors.thermal import ThermalCollector
from edgepilot.monitor.readings import SourceUnavailable
from edgepilot.monitor.sampler import Monitor
from test_monitor_parsers import JP6_ORIN_NANO


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def by_key(readings) -> dict:
    return {r.key: r for r in readings}


def executable(path: Path, script: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(script))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_cpu_percent_per_core_and_load():
    c = CpuCollector()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # some busy time so the window holds jiffies
        pass
    rs = by_key(c.collect())
    assert 0 <= rs["cpu_percent"].value <= 100 and rs["cpu_percent"].unit == "%"
    assert all(f"cpu_percent{{core={i}}}" in rs for i in range(psutil.cpu_count()))
    assert rs["load_average{window=1m}"].value == pytest.approx(os.getloadavg()[0], abs=1.0)
    assert all(r.source for r in rs.values())


def test_memory_matches_the_kernel():
    rs = by_key(MemoryCollector().collect())
    assert rs["memory_total_bytes"].value == psutil.virtual_memory().total
    assert 0 < rs["memory_percent"].value < 100 and rs["memory_used_bytes"].unit == "B"
    if psutil.swap_memory().total == 0:
        assert "swap_percent" not in rs  # no swap: no made-up 0 %


def test_disk_and_network_rates_need_two_readings():
    d, n = DiskCollector(), NetworkCollector()
    first = by_key(d.collect())
    assert first["disk_total_bytes{mount=/}"].value == psutil.disk_usage("/").total
    assert "disk_read_bytes_per_s" not in first  # a rate needs two readings; none is invented
    assert not [r for r in n.collect() if r.metric.endswith("_per_s")]
    Path(os.devnull).read_bytes()
    time.sleep(0.1)
    assert by_key(d.collect())["disk_read_bytes_per_s"].value >= 0
    rates = [r for r in n.collect() if r.metric == "net_recv_bytes_per_s"]
    assert rates and all(r.value >= 0 and r.unit == "B/s" for r in rates)


def test_process_rss_and_fds():
    p = ProcessCollector()
    ok, detail = p.probe()
    assert ok and str(os.getpid()) in detail
    rs = by_key(p.collect())
    assert rs[f"process_rss_bytes{{pid={os.getpid()}}}"].value == pytest.approx(psutil.Process().memory_info().rss,
                                                                                rel=0.2)
    assert rs[f"process_open_fds{{pid={os.getpid()}}}"].value >= 3
    gone = ProcessCollector(pid=2**22 + 12345)
    assert gone.probe() == (False, f"no process with pid {2**22 + 12345}")


def test_absent_sources_say_why(tmp_path):
    empty = tmp_path / "sys"
    empty.mkdir()
    checks = [(ThermalCollector(empty, use_psutil=False), "no readable thermal zone"),
              (RaplCollector(empty), "does not exist"),
              (HwmonPowerCollector(empty), "does not exist"),
              (BatteryCollector(empty, use_psutil=False), "no battery"),
              (JetsonSysfsCollector(empty), "not a Jetson"),
              (VcgencmdCollector(exe="no-such-vcgencmd"), "not found on PATH"),
              (TegrastatsCollector(exe="no-such-tegrastats"), "not found on PATH"),
              (InferenceCollector(InferenceRecorder()), "no runtime")]
    for c, why in checks:
        ok, detail = c.probe()
        assert not ok and why in detail, (c.name, detail)


def test_nvml_reports_why_without_a_driver():
    c = NvmlCollector()
    ok, detail = c.probe()
    if ok:  # a machine with an NVIDIA GPU: real readings with units
        rs = c.collect()
        assert any(r.metric == "gpu_util_percent" and r.unit == "%" for r in rs)
    else:
        assert "NVML" in detail or "nvidia-ml-py" in detail
        with pytest.raises(SourceUnavailable):
            c.collect()
    c.close()


def test_monitor_on_this_machine_is_honest():
    m = Monitor()
    try:
        time.sleep(0.1)
        s = m.sample()
        status = {x.name: x for x in s.sources}
        assert {"cpu", "memory", "disk", "network", "process"} <= {n for n, x in status.items() if x.available}
        for x in s.sources:
            assert x.detail  # what it reads, or why not
        for r in s.readings:  # nothing from a source that reported unavailable
            assert r.unit and r.source
        if not status["thermal"].available:
            assert not s.by_metric("temperature_celsius") or status["nvml"].available
        if not any(status[n].available for n in ("rapl", "hwmon-power", "battery", "nvml", "tegrastats")):
            assert not s.by_metric("power_watts")
    finally:
        m.close()


def test_thermal_zones_in_millidegrees(tmp_path):
    write(tmp_path, "class/thermal/thermal_zone0/type", "x86_pkg_temp")
    write(tmp_path, "class/thermal/thermal_zone0/temp", "45500")
    write(tmp_path, "class/thermal/thermal_zone1/type", "CV0-therm")
    write(tmp_path, "class/thermal/thermal_zone1/temp", "-256000")  # an absent sensor on Jetson
    write(tmp_path, "class/thermal/thermal_zone2/type", "PMIC-Die")
    write(tmp_path, "class/thermal/thermal_zone2/temp", "100000")  # a constant, not a measurement
    c = ThermalCollector(tmp_path, use_psutil=False)
    assert c.probe()[0]
    rs = c.collect()
    assert [(r.key, r.value, r.unit) for r in rs] == [("temperature_celsius{sensor=x86_pkg_temp:0}", 45.5, "°C")]
    assert rs[0].source.endswith("thermal_zone0")


def test_rapl_power_and_wraparound(tmp_path):
    z = "class/powercap/intel-rapl:0"
    write(tmp_path, f"{z}/name", "package-0")
    write(tmp_path, f"{z}/max_energy_range_uj", "262143328850")
    write(tmp_path, f"{z}/energy_uj", "262142328850")  # 1 J before the wrap
    write(tmp_path, "class/powercap/intel-rapl:0:0/name", "core")
    write(tmp_path, "class/powercap/intel-rapl:0:0/max_energy_range_uj", "262143328850")
    write(tmp_path, "class/powercap/intel-rapl:0:0/energy_uj", "1000000")
    c = RaplCollector(tmp_path)
    ok, detail = c.probe()
    assert ok and "package-0" in detail and "package-0/core" in detail
    c.collect()
    write(tmp_path, f"{z}/energy_uj", "500000")  # wrapped: 1 J + 0.5 J since the last read
    rs = by_key(c.collect())
    assert rs["energy_joules_total{rail=rapl:package-0}"].value == pytest.approx(1.5)
    assert rs["power_watts{rail=rapl:package-0}"].value > 0
    assert rs["energy_joules_total{rail=rapl:package-0/core}"].value == 0


def test_rapl_unreadable_counter_says_root(tmp_path):
    z = tmp_path / "class/powercap/intel-rapl:0"
    write(tmp_path, "class/powercap/intel-rapl:0/name", "package-0")
    z.joinpath("energy_uj").mkdir()  # a directory cannot be read as a file: the same path as a permission error
    ok, detail = RaplCollector(tmp_path).probe()
    assert not ok and "root" in detail


def test_hwmon_ina226_and_ina3221(tmp_path):
    write(tmp_path, "class/hwmon/hwmon0/name", "ina226")
    write(tmp_path, "class/hwmon/hwmon0/power1_input", "4250000")  # µW
    write(tmp_path, "class/hwmon/hwmon0/curr1_input", "850")  # mA
    write(tmp_path, "class/hwmon/hwmon0/in1_input", "5000")  # mV
    write(tmp_path, "class/hwmon/hwmon1/name", "ina3221")  # Jetson JetPack 5/6: V and I, no power file
    for n, label, mv, ma in ((1, "VDD_IN", 5080, 980), (2, "VDD_CPU_GPU_CV", 5072, 120), (3, "VDD_SOC", 5072, 280)):
        write(tmp_path, f"class/hwmon/hwmon1/in{n}_label", label)
        write(tmp_path, f"class/hwmon/hwmon1/in{n}_input", str(mv))
        write(tmp_path, f"class/hwmon/hwmon1/curr{n}_input", str(ma))
    write(tmp_path, "class/hwmon/hwmon2/name", "coretemp")  # a temperature chip is not a power monitor
    write(tmp_path, "class/hwmon/hwmon2/temp1_input", "40000")
    c = HwmonPowerCollector(tmp_path)
    ok, detail = c.probe()
    assert ok and "ina226" in detail and "ina3221" in detail and "coretemp" not in detail
    rs = by_key(c.collect())
    assert rs["power_watts{rail=ina226:power1}"].value == pytest.approx(4.25)
    assert rs["power_watts{rail=ina3221:VDD_IN}"].value == pytest.approx(5.080 * 0.980)
    assert rs["voltage_volts{rail=ina3221:VDD_SOC}"].value == pytest.approx(5.072)
    assert rs["current_amps{rail=ina3221:VDD_CPU_GPU_CV}"].value == pytest.approx(0.12)
    assert "power_watts{rail=ina226:curr1}" not in rs  # has its own power file; V x I would double count


def test_battery_power_from_sysfs(tmp_path):
    write(tmp_path, "class/power_supply/AC/type", "Mains")
    write(tmp_path, "class/power_supply/BAT0/type", "Battery")
    write(tmp_path, "class/power_supply/BAT0/current_now", "1500000")  # µA
    write(tmp_path, "class/power_supply/BAT0/voltage_now", "11400000")  # µV
    write(tmp_path, "class/power_supply/BAT0/capacity", "76")
    c = BatteryCollector(tmp_path, use_psutil=False)
    assert c.probe()[0]
    rs = by_key(c.collect())
    assert rs["power_watts{rail=battery:BAT0}"].value == pytest.approx(17.1)
    assert rs["battery_percent"].value == 76


def test_jetson_sysfs_gpu_load_and_iio_rails(tmp_path):
    write(tmp_path, "devices/platform/gpu.0/load", "537")  # per mille
    write(tmp_path, "class/devfreq/17000000.ga10b/cur_freq", "624750000")  # Hz
    iio = "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    write(tmp_path, f"{iio}/rail_name_0", "POM_5V_IN")
    write(tmp_path, f"{iio}/in_power0_input", "3353")  # mW
    write(tmp_path, f"{iio}/in_voltage0_input", "5048")  # mV
    write(tmp_path, f"{iio}/in_current0_input", "664")  # mA
    c = JetsonSysfsCollector(tmp_path)
    assert c.probe()[0]
    rs = by_key(c.collect())
    assert rs["gpu_util_percent{gpu=igpu}"].value == pytest.approx(53.7)
    assert rs["gpu_clock_mhz{gpu=17000000.ga10b}"].value == pytest.approx(624.75)
    assert rs["power_watts{rail=POM_5V_IN}"].value == pytest.approx(3.353)


def test_vcgencmd_collector_runs_the_tool(tmp_path):
    exe = executable(tmp_path / "vcgencmd", """
        import sys
        print({"measure_temp": "temp=61.8'C", "get_throttled": "throttled=0x50005"}[sys.argv[1]])
    """)
    c = VcgencmdCollector(exe=str(exe))
    ok, detail = c.probe()
    assert ok, detail
    rs = by_key(c.collect())
    assert rs["temperature_celsius{sensor=soc}"].value == 61.8
    assert rs["pi_under_voltage"].value == 1 and rs["pi_throttled_occurred"].value == 1
    assert rs["pi_soft_temperature_limit"].value == 0 and rs["pi_throttled_mask"].value == 0x50005


def test_vcgencmd_failure_is_a_reason(tmp_path):
    exe = executable(tmp_path / "vcgencmd", """
        import sys
        sys.stderr.write("VCHI initialization failed\\n"); sys.exit(255)
    """)
    ok, detail = VcgencmdCollector(exe=str(exe)).probe()
    assert not ok and "VCHI initialization failed" in detail


def test_tegrastats_collector_streams_lines(tmp_path):
    # first ~250 kB of warnings on stderr (more than a pipe holds: an undrained stderr had blocked the tool) and a
    # line that is no UTF-8 (it had killed the reader)
    exe = executable(tmp_path / "tegrastats", f"""
        import sys, time
        assert sys.argv[1:] == ["--interval", "100"]
        sys.stderr.write("NvRmPrivGetChipIdStub: warning\\n" * 8000)
        sys.stdout.buffer.write(b"\\xff\\xfe not text\\n")
        while True:
            print({JP6_ORIN_NANO!r}, flush=True)
            time.sleep(0.1)
    """)
    c = TegrastatsCollector(exe=str(exe), interval_ms=100)
    try:
        assert c.probe()[0]
        assert c.wait_first(10)
        rs = by_key(c.collect())
        assert rs["power_watts{rail=VDD_IN}"].value == pytest.approx(2.957)
        assert rs["gpu_util_percent{gpu=GR3D_FREQ}"].value == 12
    finally:
        c.close()


def test_tegrastats_that_exits_is_reported(tmp_path):
    exe = executable(tmp_path / "tegrastats", """
        import sys
        sys.stderr.write("tegrastats: permission denied\\n"); sys.exit(1)
    """)
    c = TegrastatsCollector(exe=str(exe))
    c.probe()
    assert not c.wait_first(10)
    c._proc.wait(timeout=10)
    with pytest.raises(SourceUnavailable):
        c.collect()
    c.close()


def test_inference_recorder_is_thread_safe_and_drains():
    import threading

    rec = InferenceRecorder()
    col = InferenceCollector(rec)

    def worker():
        for i in range(1000):
            rec.record(0.004 + (i % 3) * 0.001, batch=2)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.drop(3)
    rec.record(0.1, ok=False)
    rec.set_queue_depth(7)
    assert col.probe()[0]
    rs = by_key(col.collect())
    assert rs["inference_total"].value == 4001 and rs["inference_errors"].value == 1
    assert rs["inference_drops"].value == 3 and rs["inference_queue_depth"].value == 7
    assert rs["inference_latency_ms"].value == pytest.approx((4 + 5 + 6) / 3, rel=0.01)
    assert rs["inference_latency_max_ms"].value == pytest.approx(6)
    assert rs["inference_fps"].value > 0
    again = by_key(col.collect())  # a fresh window: no latency without new inferences
    assert "inference_latency_ms" not in again and again["inference_drops"].value == 0


def test_default_collectors_cover_every_source():
    names = {c.name for c in default_collectors()}
    assert names == {"cpu", "memory", "disk", "network", "process", "thermal", "vcgencmd", "nvml", "tegrastats",
                     "jetson-sysfs", "rapl", "hwmon-power", "battery", "inference"}
