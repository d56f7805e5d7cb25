"""Profiles, host detection, fit rules, gates and ranking of `edgepilot select`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgepilot import catalog
from edgepilot.errors import ConfigError
from edgepilot.evaluate.latency import LatencyStats
from edgepilot.evaluate.report import Report, VariantResult
from edgepilot.evaluate.tasks import Agreement
from edgepilot.host import Accelerator, HostInfo
from edgepilot.targets.profiles import detect_host, get_board, load_profiles
from edgepilot.targets.select import Gates, McuOverhead, select


def lat(p50: float) -> LatencyStats:
    return LatencyStats(runs=100, warmup=10, batch=1, concurrency=1, wall_s=1, p50_ms=p50, p90_ms=p50 * 1.2,
                        p95_ms=p50 * 1.3, p99_ms=p50 * 1.5, mean_ms=p50, std_ms=0.1, min_ms=p50 * 0.8,
                        max_ms=p50 * 2, throughput_sps=1000 / p50)


def variant(name, engine, fmt, p50, top1, size_kib=100, rss=80.0, arena=None, error=None, int8=None):
    spec = catalog.get(name)
    return VariantResult(variant=name, format=fmt, precision=spec and spec.precision, engine=engine,
                         size_bytes=int(size_kib * 1024), top1=top1,
                         agreement=Agreement(task="classification", metric="top-1 agreement", value=1.0),
                         accuracy_drop=0.99 - top1, int8=int8,
                         latency=None if error else lat(p50), peak_rss_mb=rss, arena_bytes=arena, error=error)


def report(*variants, reference="onnx-fp32") -> Report:
    return Report(source="m.keras", dataset="digits", samples=360, reference=reference, host="h", cpu="x86",
                  host_gflops=70.0, labelled=True, task_metric="top-1 agreement", variants=list(variants))


REPORT = report(
    variant("onnx-fp32", "onnxruntime", "onnx", 1.0, 0.99),
    variant("tflite-fp32", "litert", "tflite", 0.8, 0.99, arena=40_000),
    variant("tflite-int8", "litert", "tflite", 1.2, 0.985, size_kib=30, arena=12_000, int8=True),
    variant("openvino-int8", "openvino", "openvino", 0.5, 0.95, int8=True),
    variant("tensorrt-fp16", "tensorrt", "tensorrt", 0.3, 0.99, error="no engine here runs tensorrt"),
)


def test_host_picks_the_fastest_that_passes_the_gates():
    sel = select(REPORT, "host")
    assert sel.chosen.variant == "tflite-fp32" and sel.chosen.latency == "measured"
    reasons = {c.variant: c.reasons for c in sel.dropped}
    # faster, but fails the gate
    assert reasons["openvino-int8"] == ["loses 0.0400 top-1 against the reference (gate 0.01)"]
    assert "was not measured" in reasons["tensorrt-fp16"][0]
    # never a variant slower than the fp32 baseline when a faster one passes
    assert sel.chosen.p50_ms <= next(c.p50_ms for c in sel.ranked if c.variant == "onnx-fp32")


def test_boards_get_estimates_and_their_own_runtimes():
    rpi = select(REPORT, "rpi5")
    assert all(c.latency == "estimated" for c in rpi.ranked)
    # rpi5: 70/35 GFLOPS and a documented 2x int8 speed-up make the int8 TFLite model the fastest there
    assert rpi.chosen.variant == "tflite-int8"
    assert rpi.chosen.p50_ms == pytest.approx(1.2 * 70 / 35 / 2.0)
    coral = select(REPORT, "coral-dev-board")  # LiteRT only
    assert {c.variant for c in coral.ranked} == {"tflite-fp32", "tflite-int8"}
    assert "has no onnxruntime runtime" in next(c for c in coral.dropped if c.variant == "onnx-fp32").reasons[0]


def test_mcu_fit_counts_flash_arena_and_overhead():
    sel = select(REPORT, "stm32h7")
    assert sel.chosen.variant == "tflite-int8" and sel.chosen.engine == "tflite-micro"
    assert "flash 180/2048 KiB (margin 1868 KiB)" in sel.chosen.fit  # 30 KiB model + 150 KiB runtime
    small = select(REPORT, "arduino-nano-33-ble-sense", overhead=McuOverhead(flash_bytes=990 * 1024))
    assert small.chosen.variant == "tflite-int8"  # 30 + 990 KiB of 1024 fits; the 100 KiB fp32 model does not
    fp32 = next(c for c in small.dropped if c.variant == "tflite-fp32")
    assert "needs 1090 KiB of flash (model + runtime), the board has 1024" in fp32.reasons
    assert "TFLite Micro cannot run it" in next(c for c in small.dropped if c.variant == "onnx-fp32").reasons[0]


def test_ties_break_on_accuracy_then_size_then_name():
    r = report(variant("onnx-fp32", "onnxruntime", "onnx", 1.0, 0.99),
               variant("b", "onnxruntime", "onnx", 0.5, 0.99, size_kib=50),
               variant("a", "onnxruntime", "onnx", 0.5, 0.99, size_kib=50),
               variant("c", "onnxruntime", "onnx", 0.5, 0.99, size_kib=40),
               variant("d", "onnxruntime", "onnx", 0.5, 0.995, size_kib=90))
    assert [c.variant for c in select(r, "host").ranked] == ["d", "c", "a", "b", "onnx-fp32"]


def test_nothing_fits_names_the_closest_and_what_it_misses():
    sel = select(REPORT, "host", Gates(max_latency_ms=0.5))
    assert sel.chosen is None
    assert sel.message.startswith("nothing fits host: the closest is tflite-fp32, which misses: p95 1.040 ms")
    assert "over the 0.5 ms gate" in sel.message


def test_memory_gate_and_budget():
    sel = select(REPORT, "host", Gates(max_memory_mb=50))
    assert sel.chosen is None and "needs 80.0 MiB, over the 50.0 MiB gate" in sel.message
    big = report(variant("onnx-fp32", "onnxruntime", "onnx", 1.0, 0.99, rss=3000.0))
    sel = select(big, "rpi4")  # 4 GiB board: half of it is the budget
    assert sel.chosen is None and "exceeds half of Raspberry Pi 4" in sel.message


def test_profiles_and_user_files(tmp_path, monkeypatch):
    p = load_profiles()
    assert set(p.classes) == {"mcu", "embedded-cpu", "edge-gpu", "edge-server"}
    for name in ("stm32h7", "esp32-s3", "arduino-nano-33-ble-sense", "rpi4", "rpi5", "jetson-nano",
                 "jetson-orin-nano", "jetson-agx-orin", "coral-dev-board", "rk3588", "x86-edge-box",
                 "nvidia-edge-server"):
        assert name in p.boards
    assert all(b.flash_bytes for b in p.boards.values() if b.klass == "mcu")
    mine = tmp_path / "mine.yaml"
    mine.write_text("boards:\n  my-box:\n    name: My box\n    class: embedded-cpu\n    arch: aarch64\n"
                    "    cpu: 4x A55\n    cores: 4\n    ram_bytes: 2147483648\n    power_w: 5\n"
                    "    runtimes: [litert]\n    precision: int8\n    est_gflops: 6\n")
    assert load_profiles((str(mine),)).boards["my-box"].ram_bytes == 2**31
    bad = tmp_path / "bad.yaml"
    bad.write_text("boards:\n  x:\n    name: X\n    class: mcu\n    cores: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid profile at boards.x"):
        load_profiles((str(bad),))
    with pytest.raises(ConfigError, match="unknown target 'pi6'"):
        get_board("pi6")


HOST = HostInfo(hostname="h", os="Linux", arch="aarch64", python="3.11", cpu_model="x", physical_cores=4,
                logical_cores=4, ram_bytes=8 * 2**30, instruction_sets=["asimd", "asimddp"], accelerators=[])


@pytest.mark.parametrize("model,board,klass", [
    ("Raspberry Pi 5 Model B Rev 1.0", "rpi5", "embedded-cpu"),
    ("Raspberry Pi 4 Model B Rev 1.4", "rpi4", "embedded-cpu"),
    ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano", "edge-gpu"),
    ("NVIDIA Jetson Nano Developer Kit", "jetson-nano", "embedded-cpu"),
])
def test_detect_from_device_tree(tmp_path, model, board, klass):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    found = detect_host(HOST, root=tmp_path)
    assert (found.board, found.klass) == (board, klass)


def test_detect_x86_and_gpu(tmp_path):
    x86 = HOST.model_copy(update={"arch": "x86_64", "instruction_sets": ["avx2"]})
    assert detect_host(x86, root=tmp_path).klass == "embedded-cpu"
    gpu = x86.model_copy(update={"ram_bytes": 128 * 2**30,
                                 "accelerators": [Accelerator(kind="nvidia-gpu", name="NVIDIA L4")]})
    found = detect_host(gpu, root=tmp_path)
    assert (found.board, found.klass) == ("nvidia-edge-server", "edge-server") and "NVIDIA L4" in found.how


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"})


def test_cli_targets_and_select(tmp_path):
    out = run_cli("targets")
    assert out.returncode == 0 and "jetson-orin-nano" in out.stdout and "this host: class" in out.stdout
    path = tmp_path / "report.json"
    path.write_text(REPORT.model_dump_json())
    picks = {}
    for target in ("host", "rpi5", "stm32h7"):
        proc = run_cli("select", str(path), "--target", target, "--json")
        assert proc.returncode == 0, proc.stderr
        picks[target] = json.loads(proc.stdout)["chosen"]["variant"]
    assert picks == {"host": "tflite-fp32", "rpi5": "tflite-int8", "stm32h7": "tflite-int8"}
    table = run_cli("select", str(path), "--target", "stm32h7").stdout
    assert "choice: stm32h7: tflite-int8 on tflite-micro" in table and "dropped onnx-fp32" in table
    none = run_cli("select", str(path), "--target", "host", "--max-latency-ms", "0.1")
    assert none.returncode == 1 and "nothing fits host" in none.stdout
    bad = run_cli("select", str(tmp_path / "nope.json"), "--target", "host")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
