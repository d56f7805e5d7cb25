"""The host yardstick board estimates rest on, and the basis each estimate states."""
from __future__ import annotations

from edgepilot.evaluate.yardstick import Yardstick, measure
from edgepilot.targets.select import select
from test_targets import REPORT


def test_yardstick_states_its_threads_and_method():
    y = measure(threads=1)
    assert y.threads == 1 and y.gflops > 0
    assert "matmul 1024x1024" in y.method and "warm-up" in y.method and "threadpoolctl" in y.method
    assert 0 <= y.spread < 1
    assert y.busy is None or 0 <= y.busy <= 1
    assert y.describe().startswith(f"host {y.gflops:.1f} GFLOP/s fp32 (1 thread, matmul 1024")


def test_threadpoolctl_pins_the_blas_pool():
    from threadpoolctl import threadpool_info

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert measure(threads=1).threads == 1
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before  # restored after


def test_estimates_state_their_basis():
    stick = Yardstick(gflops=70.0, threads=2, method="fp32 matmul 1024x1024, best of 9", spread=0.02, busy=0.0)
    sel = select(REPORT.model_copy(update={"yardstick": stick}), "rpi5")
    int8 = next(c for c in sel.ranked if c.variant == "tflite-int8")
    assert int8.basis == ("estimated: host 70.0 GFLOP/s fp32 (2 threads, matmul 1024) → Raspberry Pi 5 (8 GB): "
                          "35 GFLOP/s documented, ×2 int8 speed-up documented")
    fp32 = next(c for c in sel.ranked if c.variant == "tflite-fp32")
    assert fp32.basis.endswith("35 GFLOP/s documented") and "speed-up" not in fp32.basis
    assert int8.basis in sel.message
    busy = select(REPORT.model_copy(update={"yardstick": stick.model_copy(update={"busy": 0.5})}), "rpi5")
    assert "other work took 50% of the CPU meanwhile" in busy.chosen.basis
    assert select(REPORT, "rpi5").chosen.basis.startswith("estimated: host 70.0 GFLOP/s fp32 → ")  # old report
    assert select(REPORT, "host").chosen.basis is None  # measured, not estimated


def test_default_threads_are_the_usable_cores():
    from edgepilot.engines.base import default_threads

    assert measure().threads == default_threads()
