"""Energy over a window: RAPL counters with wraparound, sampled hwmon power, and the field `edgepilot bench` fills."""
from __future__ import annotations

import pytest

from edgepilot.evaluate.benchmark import BenchConfig, benchmark
from edgepilot.model import Format
from edgepilot.monitor.energy import RaplMeter, SampledPowerMeter, open_energy_meter
from edgepilot.monitor.readings import SourceUnavailable
from test_monitor_collectors import write


def test_rapl_meter_sums_packages_and_survives_a_wrap(tmp_path):
    for pkg, start in ((0, "262143000000"), (1, "5000000")):
        write(tmp_path, f"class/powercap/intel-rapl:{pkg}/name", f"package-{pkg}")
        write(tmp_path, f"class/powercap/intel-rapl:{pkg}/max_energy_range_uj", "262143328850")
        write(tmp_path, f"class/powercap/intel-rapl:{pkg}/energy_uj", start)
    write(tmp_path, "class/powercap/intel-rapl:0:0/name", "core")  # a part of package-0: not added again
    write(tmp_path, "class/powercap/intel-rapl:0:0/max_energy_range_uj", "262143328850")
    write(tmp_path, "class/powercap/intel-rapl:0:0/energy_uj", "0")
    meter = RaplMeter(tmp_path)
    assert meter.source == "rapl:package-0+package-1"
    meter.start()
    write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "671150")  # wrapped: 0.328850 + 0.671150 = 1 J
    write(tmp_path, "class/powercap/intel-rapl:1/energy_uj", "7500000")  # 2.5 J
    write(tmp_path, "class/powercap/intel-rapl:0:0/energy_uj", "900000000")
    w = meter.stop()
    assert w.joules == pytest.approx(3.5) and w.seconds > 0 and "package" in w.scope


def test_sampled_meter_integrates_a_constant_rail(tmp_path):
    write(tmp_path, "class/hwmon/hwmon0/name", "ina226")
    write(tmp_path, "class/hwmon/hwmon0/power1_input", "5000000")
    meter, why = open_energy_meter(tmp_path)
    assert why == "" and isinstance(meter, SampledPowerMeter) and meter.source == "hwmon:ina226:power1"
    meter.start()
    import time

    time.sleep(0.3)
    w = meter.stop()
    assert w.mean_watts == pytest.approx(5.0)  # trapezoids of a constant, from start() to stop() exactly
    assert w.joules > 0


def test_no_energy_source_gives_every_reason(tmp_path):
    meter, why = open_energy_meter(tmp_path)
    assert meter is None
    assert "tegrastats:" in why and "hwmon:" in why and "rapl:" in why
    with pytest.raises(SourceUnavailable):
        RaplMeter(tmp_path)


def test_bench_reports_energy_or_why_not(built):
    r = benchmark(BenchConfig(model=str(built(Format.ONNX, "mlp").path), runs=50, warmup=2, threads=1))
    e = r.energy
    assert e is not None
    if e.source is None:  # this VM: no powercap, no hwmon, no tegrastats
        assert e.scope.startswith("unavailable: ") and "rapl" in e.scope
        assert e.joules is None and e.per_inference_mj is None
    else:
        assert e.joules > 0 and e.per_inference_mj > 0 and e.mean_power_w > 0
