"""tegrastats and vcgencmd parsers against lines in the formats their documentation and users' reports show."""
from __future__ import annotations

import pytest

from edgepilot.monitor.collectors.raspberrypi import parse_get_throttled, parse_measure_temp
from edgepilot.monitor.collectors.tegrastats import parse_tegrastats, tegrastats_readings

# JetPack 4.x (L4T 32), Jetson Nano: CPU load@MHz per core, EMC/GR3D load@MHz, POM_* rails as current/average mW
# without units, and the PMIC sensor that always reads 100 °C.
JP4_NANO = ("RAM 1462/3957MB (lfb 457x4MB) IRAM 0/252kB(lfb 252kB) CPU [43%@1036,44%@1036,36%@1036,34%@1036] "
            "EMC_FREQ 6%@1600 GR3D_FREQ 51%@307 NVDEC 192 APE 25 PLL@20.5C CPU@24.5C PMIC@100C GPU@22C AO@29.5C "
            "thermal@22.75C POM_5V_IN 3353/1616 POM_5V_GPU 450/61 POM_5V_CPU 613/210")
# JetPack 4.x, AGX Xavier: no clock after EMC/GR3D, VDD_* rails without units, eight cores.
JP4_XAVIER = ("RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345,off,off] "
              "EMC_FREQ 0% GR3D_FREQ 0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C "
              "thermal@41.9C Tdiode@41.25C VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 "
              "VDD_IN 3140/3208 VDD_SYS_CPU 536/590 VDD_SYS_DDR 557/601")
# L4T 28 (TX1): lowercase "cpu", one clock for all cores after the bracket, "EMC"/"GR3D" without _FREQ.
L4T28_TX1 = ("RAM 3607/3983MB (lfb 47x4MB) SWAP 873/8192MB (cached 281MB) cpu [17%,11%,65%,0%]@1734 "
             "EMC 1%@1600 APE 25 GR3D 39%@76")
# JetPack 5.x (L4T 35), Orin NX: timestamp prefix, SWAP, offline cores, GR3D2 (second GPC), mW units on rails.
JP5_ORIN_NX = ("01-24-2024 09:17:09 RAM 3503/7337MB (lfb 7x1MB) SWAP 430/3668MB (cached 1MB) "
               "CPU [11%@729,13%@729,9%@729,18%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@305 GR3D2_FREQ 0%@0 "
               "VIC_FREQ 115 APE 174 CV0@42.718C CPU@44.093C SOC2@42.625C SOC0@43.281C CV1@42.25C GPU@41.343C "
               "tj@46.968C SOC1@46.968C CV2@42.875C VDD_IN 4915mW/4915mW VDD_CPU_GPU_CV 449mW/449mW "
               "VDD_SOC 1431mW/1431mW")
# JetPack 5.x, AGX Orin: one clock per GPC in brackets, absent sensors at -256 °C, unconnected NC channels.
JP5_AGX_ORIN = ("04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) "
                "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] "
                "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C Tboard@32C "
                "SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C GPU@-256C tj@44.343C SOC1@41.25C CV2@-256C "
                "VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW "
                "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
# JetPack 6.x (L4T 36), Orin Nano: lowercase sensor names, engines reported "off", GR3D clock in brackets.
JP6_ORIN_NANO = ("09-21-2025 15:38:17 RAM 3645/7620MB (lfb 63x4MB) SWAP 236/3810MB (cached 0MB) "
                 "CPU [1%@729,1%@729,4%@729,1%@729,0%@729,0%@729] EMC_FREQ 0%@204 GR3D_FREQ 12%@[305] NVDEC off "
                 "NVJPG off NVJPG1 off VIC off OFA off APE 200 cpu@44.125C soc2@43.375C soc0@42.125C gpu@44.531C "
                 "tj@44.531C soc1@43.156C VDD_IN 2957mW/2957mW VDD_CPU_GPU_CV 486mW/486mW VDD_SOC 1012mW/1012mW")
# JetPack 6 on a later L4T: no EMC, GR3D without clock, "C/C" temperatures and a third figure on each rail.
JP6_LATER = ("09-01-2026 09:25:18 RAM 5739/7546MB (lfb 1x2MB) SWAP 2047/2048MB (cached 209MB) "
             "CPU [72%@1728,75%@1728,88%@1728,79%@1728,87%@1728,78%@1728] GR3D_FREQ 33% cpu@50C/50C "
             "soc2@47.937C/47.937C soc0@48.437C/48.437C gpu@48.75C/48.75C tj@50C/50C soc1@48.5C/48.5C "
             "VDD_IN 9761mW/9761mW/9761mW VDD_CPU_GPU_CV 4238mW/4238mW/4238mW VDD_SOC 1825mW/1825mW/1825mW")


def test_jetpack4_nano():
    st = parse_tegrastats(JP4_NANO)
    assert (st.ram_used_mb, st.ram_total_mb, st.lfb_blocks, st.lfb_block_mb) == (1462, 3957, 457, 4)
    assert st.swap_total_mb is None  # this release prints no SWAP field
    assert [(c.load_percent, c.freq_mhz) for c in st.cpus] == [(43, 1036), (44, 1036), (36, 1036), (34, 1036)]
    assert st.gpu_load_percent == 51 and st.engines["GR3D_FREQ"].freq_mhz == [307]
    assert st.engines["EMC_FREQ"].load_percent == 6 and st.engines["EMC_FREQ"].freq_mhz == [1600]
    assert st.engines["NVDEC"].freq_mhz == [192] and st.engines["APE"].freq_mhz == [25]
    assert st.temperatures == {"PLL": 20.5, "CPU": 24.5, "GPU": 22, "AO": 29.5, "thermal": 22.75}  # no fixed PMIC
    assert {k: (r.current_mw, r.average_mw) for k, r in st.rails.items()} == {
        "POM_5V_IN": (3353, 1616), "POM_5V_GPU": (450, 61), "POM_5V_CPU": (613, 210)}


def test_jetpack4_xavier_without_clocks():
    st = parse_tegrastats(JP4_XAVIER)
    assert len(st.cpus) == 8 and [c.online for c in st.cpus[-2:]] == [False, False]
    assert st.cpus[1].load_percent == 21 and st.cpus[1].freq_mhz == 345
    assert st.gpu_load_percent == 0 and st.engines["GR3D_FREQ"].freq_mhz == []
    assert st.rails["VDD_IN"].current_mw == 3140 and st.rails["VDD_SYS_DDR"].average_mw == 601
    assert "PMIC" not in st.temperatures and st.temperatures["Tdiode"] == 41.25


def test_l4t28_shared_cpu_clock():
    st = parse_tegrastats(L4T28_TX1)
    assert [c.load_percent for c in st.cpus] == [17, 11, 65, 0] and {c.freq_mhz for c in st.cpus} == {1734}
    assert (st.swap_used_mb, st.swap_total_mb, st.swap_cached_mb) == (873, 8192, 281)
    assert st.gpu_load_percent == 39 and st.engines["EMC"].freq_mhz == [1600]


def test_jetpack5_orin_nx():
    st = parse_tegrastats(JP5_ORIN_NX)
    assert st.ram_used_mb == 3503 and st.lfb_block_mb == 1 and st.swap_used_mb == 430
    assert [c.online for c in st.cpus] == [True] * 4 + [False] * 2
    assert st.engines["GR3D2_FREQ"].freq_mhz == [0] and st.engines["VIC_FREQ"].freq_mhz == [115]
    assert st.temperatures["tj"] == 46.968 and st.temperatures["CV0"] == 42.718
    assert st.rails["VDD_CPU_GPU_CV"].current_mw == 449 and set(st.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


def test_jetpack5_agx_orin_absent_sensors_and_nc_rails():
    st = parse_tegrastats(JP5_AGX_ORIN)
    assert len(st.cpus) == 12 and st.engines["GR3D_FREQ"].freq_mhz == [0, 0]
    assert "CV0" not in st.temperatures and "GPU" not in st.temperatures  # -256 °C: sensor absent, not a reading
    assert st.temperatures["tj"] == 44.343
    assert "NC" not in st.rails and st.rails["VIN_SYS_5V0"].current_mw == 4025


def test_jetpack6_orin_nano():
    st = parse_tegrastats(JP6_ORIN_NANO)
    assert st.gpu_load_percent == 12 and st.engines["GR3D_FREQ"].freq_mhz == [305]
    assert all(not st.engines[e].on for e in ("NVDEC", "NVJPG", "NVJPG1", "VIC", "OFA"))
    assert st.temperatures["gpu"] == 44.531 and st.temperatures["cpu"] == 44.125
    assert st.rails["VDD_IN"].current_mw == 2957 and st.rails["VDD_SOC"].average_mw == 1012


def test_jetpack6_later_format():
    st = parse_tegrastats(JP6_LATER)
    assert st.gpu_load_percent == 33 and "EMC_FREQ" not in st.engines
    assert st.temperatures == {"cpu": 50, "soc2": 47.937, "soc0": 48.437, "gpu": 48.75, "tj": 50, "soc1": 48.5}
    assert st.rails["VDD_IN"].current_mw == 9761 and st.rails["VDD_CPU_GPU_CV"].average_mw == 4238


def test_readings_carry_units_and_feed_the_panels():
    rs = {r.key: r for r in tegrastats_readings(parse_tegrastats(JP6_ORIN_NANO))}
    assert rs["gpu_util_percent{gpu=GR3D_FREQ}"].value == 12 and rs["gpu_util_percent{gpu=GR3D_FREQ}"].unit == "%"
    assert rs["power_watts{rail=VDD_IN}"].value == pytest.approx(2.957) and rs["power_watts{rail=VDD_IN}"].unit == "W"
    assert rs["temperature_celsius{sensor=tj}"].unit == "°C"
    assert rs["jetson_ram_used_bytes"].value == 3645 * 2**20
    assert rs["jetson_engine_on{engine=NVDEC}"].value == 0
    assert all(r.source == "tegrastats" for r in rs.values())


@pytest.mark.parametrize("bad", ["", "hello world", "CPU [1%@729]"])
def test_not_a_tegrastats_line(bad):
    with pytest.raises(ValueError, match="not a tegrastats line"):
        parse_tegrastats(bad)


def test_vcgencmd_measure_temp():
    assert parse_measure_temp("temp=47.2'C\n") == 47.2
    assert parse_measure_temp("temp=-3.0'C") == -3.0
    with pytest.raises(ValueError):
        parse_measure_temp("VCHI initialization failed")


def test_vcgencmd_get_throttled_bits():
    ok = parse_get_throttled("throttled=0x0\n")
    assert ok.raw == 0 and ok.active == []
    # 0x50005: under-voltage now and before, throttled now and before (a weak power supply)
    st = parse_get_throttled("throttled=0x50005")
    assert st.raw == 0x50005
    assert set(st.active) == {"under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"}
    # 0x80008: soft temperature limit active now and before
    assert set(parse_get_throttled("throttled=0x80008").active) == {"soft_temperature_limit",
                                                                    "soft_temperature_limit_occurred"}
    # 0x20002: ARM frequency capped now and before
    assert set(parse_get_throttled("throttled=0x20002").active) == {"arm_frequency_capped",
                                                                    "arm_frequency_capped_occurred"}
    with pytest.raises(ValueError):
        parse_get_throttled("error=1 error_msg=\"Command not registered\"")
