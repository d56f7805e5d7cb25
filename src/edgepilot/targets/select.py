"""Choose the variant to ship for a target: runtime and memory fit, gates, ranking, and a reason for every drop.

Figures measured on the host are used as they are for the host. For any other target, latency is
an estimate scaled by the board's documented factors and is always labelled estimated.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from edgepilot import catalog
from edgepilot.evaluate.report import Report, VariantResult
from edgepilot.targets.profiles import Board, get_board

HOST = "host"


class Gates(BaseModel):
    max_latency_ms: float | None = Field(None, gt=0, description="p95 latency bound")
    max_accuracy_drop: float | None = Field(
        0.01, ge=0, description="the task metric lost against the reference: top-1 accuracy where there are "
                                "labels, else 1 - agreement with the reference")
    min_agreement: float | None = Field(None, ge=0, le=1, description="the task's agreement with the reference, "
                                                                      "at least (top-1 agreement, detection F1, ...)")
    max_memory_mb: float | None = Field(None, gt=0, description="peak RSS bound (tensor arena on MCUs)")


class McuOverhead(BaseModel):
    """What the firmware needs besides the model and the arena (TFLM runtime, application, stack)."""

    flash_bytes: int = 150 * 1024
    ram_bytes: int = 64 * 1024


class Candidate(BaseModel):
    variant: str
    engine: str
    format: str
    size_bytes: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    latency: Literal["measured", "estimated", "unknown"] = "unknown"
    basis: str | None = None  # what an estimate rests on: the host yardstick, the board's figures
    accuracy_drop: float | None = None
    memory_mb: float | None = None
    fit: str = ""  # the memory margin, in words
    reasons: list[str] = []  # why it was dropped; empty when it qualifies


class Selection(BaseModel):
    target: str
    chosen: Candidate | None
    ranked: list[Candidate]  # every qualifying variant, best first
    dropped: list[Candidate]
    message: str


def select(report: Report, target: str, gates: Gates | None = None, overhead: McuOverhead | None = None) -> Selection:
    gates = gates or Gates()
    board = None if target == HOST else get_board(target)
    candidates = [_assess(v, board, report, gates, overhead or McuOverhead()) for v in report.variants]
    ranked = sorted((c for c in candidates if not c.reasons), key=_rank_key)
    dropped = [c for c in candidates if c.reasons]
    if ranked:
        best = ranked[0]
        message = (f"{target}: {best.variant} on {best.engine} — p50 {best.p50_ms:.3f} ms "
                   f"({best.basis or best.latency})"
                   + (f", {_drop_name(report)} lost {best.accuracy_drop:+.4f}" if best.accuracy_drop is not None
                      else "")
                   + (f", {best.fit}" if best.fit else ""))
        return Selection(target=target, chosen=best, ranked=ranked, dropped=dropped, message=message)
    closest = min(dropped, key=lambda c: (len(c.reasons), _rank_key(c)), default=None)
    if closest is None:
        message = f"nothing fits {target}: the report has no variants"
    else:
        misses = "; ".join(closest.reasons)
        message = f"nothing fits {target}: the closest is {closest.variant}, which misses: {misses}"
    return Selection(target=target, chosen=None, ranked=[], dropped=dropped, message=message)


def _rank_key(c: Candidate):
    # Fastest first; on a tie, the more accurate, then the smaller, then by name so the order is stable.
    return (c.p50_ms if c.p50_ms is not None else float("inf"), c.accuracy_drop or 0.0, c.size_bytes, c.variant)


# Engines whose CPU kernels compute in fp16 on Armv8.2 when given fp16 models. LiteRT's float16
# TFLite models carry fp16 weights but compute in fp32 on the CPU, so no speed-up applies there.
_FP16_COMPUTE = {"mnn", "ncnn", "openvino"}


def _speedup(board: Board, v: VariantResult, engine: str) -> tuple[float, str]:
    """The board's documented speed-up over fp32 for this variant, and the precision it is for."""
    # full int8 compute only, and only where the variant really holds int8 ops and is smaller than its float one
    if v.precision == catalog.INT8 and v.int8:
        return board.int8_speedup, "int8"
    if v.precision == catalog.FP16 and engine in _FP16_COMPUTE:
        return board.fp16_speedup, "fp16"
    return 1.0, "fp32"


def _drop_name(report: Report) -> str:
    return "top-1" if report.labelled else f"agreement ({report.task_metric or 'with the reference'})"


def accuracy_reasons(v: VariantResult, gates: Gates, report: Report) -> list[str]:
    """Why the variant fails the accuracy gates: the numbers the evaluation recorded, read as they are."""
    reasons = []
    drop, most = v.accuracy_drop, gates.max_accuracy_drop
    if most is not None and drop is not None and drop > most:
        reasons.append(f"loses {v.accuracy_drop:.4f} {_drop_name(report)} against the reference "
                       f"(gate {gates.max_accuracy_drop})")
    a = v.agreement
    if gates.min_agreement is not None and a is not None and a.value < gates.min_agreement:
        reasons.append(f"agreement with the reference {a.value:.4f} ({a.metric}) is under the {gates.min_agreement} "
                       "gate")
    return reasons


def _assess(v: VariantResult, board: Board | None, report: Report, gates: Gates, overhead: McuOverhead) -> Candidate:
    mcu = board is not None and board.flash_bytes is not None
    c = Candidate(variant=v.variant, engine="tflite-micro" if mcu else (v.engine or "-"), format=v.format,
                  size_bytes=v.size_bytes)
    if v.error or v.latency is None:
        c.reasons.append(f"was not measured ({v.error or 'no latency'})")
        return c
    # runtime fit
    if board is not None:
        if mcu and v.arena_bytes is None:
            c.reasons.append("TFLite Micro cannot run it (an MCU runs only TFLite models with TFLM kernels)")
        elif not mcu and v.engine not in board.runtimes:
            c.reasons.append(f"{board.name} has no {v.engine} runtime (it has {', '.join(board.runtimes)})")
    # latency: measured here, or scaled by the board's documented factors
    if board is None:
        c.p50_ms, c.p95_ms, c.latency = v.latency.p50_ms, v.latency.p95_ms, "measured"
    elif report.host_gflops:
        speedup, precision = _speedup(board, v, c.engine)
        scale = report.host_gflops / board.est_gflops / speedup
        c.p50_ms, c.p95_ms, c.latency = v.latency.p50_ms * scale, v.latency.p95_ms * scale, "estimated"
        host = report.yardstick.describe() if report.yardstick else f"host {report.host_gflops:.1f} GFLOP/s fp32"
        c.basis = (f"estimated: {host} → {board.name}: {board.est_gflops:g} GFLOP/s documented"
                   + (f", ×{speedup:g} {precision} speed-up documented" if speedup != 1 else ""))
    # memory fit
    if mcu:
        if v.arena_bytes is not None:
            flash = v.size_bytes + overhead.flash_bytes
            ram = v.arena_bytes + overhead.ram_bytes
            c.memory_mb = v.arena_bytes / 2**20
            c.fit = (f"flash {flash / 1024:.0f}/{board.flash_bytes / 1024:.0f} KiB "
                     f"(margin {(board.flash_bytes - flash) / 1024:.0f} KiB), RAM {ram / 1024:.0f}/"
                     f"{board.ram_bytes / 1024:.0f} KiB (margin {(board.ram_bytes - ram) / 1024:.0f} KiB)")
            if flash > board.flash_bytes:
                c.reasons.append(f"needs {flash / 1024:.0f} KiB of flash (model + runtime), the board has "
                                 f"{board.flash_bytes / 1024:.0f}")
            if ram > board.ram_bytes:
                c.reasons.append(f"needs {ram / 1024:.0f} KiB of RAM (arena + runtime), the board has "
                                 f"{board.ram_bytes / 1024:.0f}")
    else:
        c.memory_mb = v.peak_rss_mb
        if board is not None and v.peak_rss_mb is not None:
            budget = board.ram_bytes / 2**20 / 2  # half the RAM: the OS and the application need the rest
            c.fit = f"peak RSS {v.peak_rss_mb:.0f} MiB of a {budget:.0f} MiB budget"
            if v.peak_rss_mb > budget:
                c.reasons.append(f"peak RSS {v.peak_rss_mb:.0f} MiB exceeds half of {board.name}'s RAM")
    # gates
    c.accuracy_drop = v.accuracy_drop
    c.reasons += accuracy_reasons(v, gates, report)
    if gates.max_latency_ms is not None and c.p95_ms is not None and c.p95_ms > gates.max_latency_ms:
        c.reasons.append(f"p95 {c.p95_ms:.3f} ms ({c.latency}) is over the {gates.max_latency_ms} ms gate")
    if gates.max_memory_mb is not None and c.memory_mb is not None and c.memory_mb > gates.max_memory_mb:
        c.reasons.append(f"needs {c.memory_mb:.1f} MiB, over the {gates.max_memory_mb} MiB gate")
    return c
