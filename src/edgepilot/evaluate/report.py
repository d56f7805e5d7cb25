"""Measure every variant the same way and write report.json + report.md."""
from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgepilot.engines import all_engines, open_session
from edgepilot.errors import EdgepilotError
from edgepilot.evaluate.accuracy import Agreement, agreement, predict, topk_accuracy
from edgepilot.evaluate.benchmark import BenchConfig, benchmark
from edgepilot.evaluate.datasets import Dataset, fit_to_input
from edgepilot.evaluate.latency import LatencyStats
from edgepilot.evaluate.yardstick import Yardstick
from edgepilot.evaluate.yardstick import measure as measure_yardstick
from edgepilot.host import host_info
from edgepilot.model import Model

log = logging.getLogger(__name__)
REFERENCES = ("onnx-fp32", "tflite-fp32", "openvino-fp32")  # float32 variants a reference can come from


class VariantResult(BaseModel):
    variant: str
    format: str
    engine: str | None = None
    size_bytes: int = 0
    top1: float | None = None
    top5: float | None = None
    agreement: Agreement | None = None
    latency: LatencyStats | None = None
    load_ms: float | None = None
    peak_rss_mb: float | None = None
    arena_bytes: int | None = None  # TFLite Micro tensor arena, for TFLite variants it can run
    error: str | None = None
    flags: list[str] = []
    tries: list[str] = []  # settings tried after the variant failed the accuracy gate, with their top-1


class Report(BaseModel):
    source: str
    dataset: str
    samples: int
    reference: str | None
    host: str
    cpu: str
    host_gflops: float | None = None  # fp32 matrix-product rate measured when the report was made
    yardstick: Yardstick | None = None  # how host_gflops was measured (threads, method, spread)
    variants: list[VariantResult]
    # §3.1: weight quantisation error by bit depth, over all weights and for the worst tensors at 8 bits
    weight_error: list[dict] = []
    worst_tensors_8bit: list[dict] = []


def evaluate_one(vid: str, model: Model, ds: Dataset, *, seconds: float = 2.0,
                 threads: int | None = None) -> tuple[VariantResult, np.ndarray | None]:
    """One variant's accuracy in this process, then its latency and memory in a fresh subprocess."""
    engines = {n: e for n, e in all_engines().items() if e.available()[0]}
    engine = next((n for n, e in engines.items() if model.format in e.formats), None)
    if "arena_bytes" in model.meta and "tflite-micro" in engines:  # a TFLite Micro deliverable runs on TFLM
        engine = "tflite-micro"
    # a TFLite Micro deliverable also holds C sources: what goes to flash is the model's bytes
    size = int(model.meta.get("model_bytes", model.size_bytes))
    r = VariantResult(variant=vid, format=model.format.value, engine=engine, size_bytes=size)
    if engine is None:
        r.error = f"no engine here runs {model.format.value}"
        return r, None
    outputs = None
    try:
        with open_session(model, engine, threads=threads) as s:
            outputs = predict(s, fit_to_input(ds, s.inputs[0]))
        if ds.y is not None:
            r.top1 = topk_accuracy(outputs, ds.y, 1)
            r.top5 = topk_accuracy(outputs, ds.y, 5)
        b = benchmark(BenchConfig(model=str(model.path), engine=engine, threads=threads, seconds=seconds))
        r.latency, r.load_ms, r.peak_rss_mb = b.latency, b.load_ms, b.peak_rss_mb
        r.arena_bytes = _arena(model, engines)
    except EdgepilotError as e:
        r.error = str(e)
    return r, outputs


def evaluate_variants(variants: dict[str, Model], ds: Dataset, *, seconds: float = 2.0, threads: int | None = None,
                      progress=None) -> tuple[list[VariantResult], str | None, np.ndarray | None]:
    """Every variant measured the same way; agreement against the first float32 reference that ran.

    Returns the results, the reference variant's id and its outputs (for variants measured later).
    """
    outputs: dict[str, np.ndarray] = {}
    results = []
    task = progress.add_task("evaluating", total=len(variants)) if progress else None
    for vid, model in variants.items():
        if progress:
            progress.update(task, description=f"evaluating {vid}")
        r, out = evaluate_one(vid, model, ds, seconds=seconds, threads=threads)
        if out is not None:
            outputs[vid] = out
        results.append(r)
        if progress:
            progress.advance(task)
    reference = next((v for v in REFERENCES if v in outputs), None)
    for r in results:
        if reference and r.variant in outputs:
            r.agreement = agreement(outputs[r.variant], outputs[reference])
    _flag_slow_int8(results)
    return results, reference, outputs.get(reference) if reference else None


def _arena(model: Model, engines: dict) -> int | None:
    """The tensor arena TFLite Micro needs for a TFLite variant; None where it cannot run it."""
    if model.format.value != "tflite" or "tflite-micro" not in engines:
        return None
    from edgepilot.engines.micro import measure_arena

    try:
        return measure_arena(model.path)
    except EdgepilotError:
        return None


def _flag_slow_int8(results: list[VariantResult]) -> None:
    """int8 is not faster on every CPU (this one has no VNNI): say so with the measured ratio."""
    fp32 = {(r.format, r.engine): r for r in results if r.variant.endswith("fp32") and r.latency}
    for r in results:
        base = fp32.get((r.format, r.engine))  # same format on the same runtime: only precision differs
        # 5 % margin: a smaller difference is within run-to-run noise on a shared machine
        if "int8" in r.variant and r.latency and base and r.latency.p50_ms > 1.05 * base.latency.p50_ms:
            r.flags.append(f"int8 slower than fp32 here: {r.latency.p50_ms / base.latency.p50_ms:.2f}x the p50 of "
                           f"{base.variant}")


def weight_error(model: Model) -> tuple[list[dict], list[dict]]:
    """Error by bit depth over every weight, and the 5 tensors with the lowest SQNR at 8 bits per tensor."""
    from edgepilot.evaluate.quant_error import quant_error

    try:
        q = quant_error(model)
    except EdgepilotError as e:
        log.info("no weight analysis: %s", e)
        return [], []
    eight = sorted((t for t in q.tensors if t.bits == 8 and t.scheme == "per-tensor" and t.sqnr_db is not None),
                   key=lambda t: t.sqnr_db)[:5]
    return q.overall, [{"name": t.name, "shape": list(t.shape), "sqnr_db": t.sqnr_db, "mse": t.mse} for t in eight]


def build_report(source: Model, ds: Dataset, results: list[VariantResult], reference: str | None,
                 analysed: Model | None = None) -> Report:
    """`analysed` is the float model whose weights the §3.1 analysis reads (ONNX or Keras)."""
    host = host_info()
    stick = measure_yardstick()
    overall, worst = weight_error(analysed) if analysed is not None else ([], [])
    return Report(source=str(source.path), dataset=ds.name, samples=len(ds), reference=reference,
                  host=host.hostname, host_gflops=stick.gflops, yardstick=stick,
                  cpu=f"{host.cpu_model}, {host.logical_cores} cores, "
                  f"{', '.join(host.instruction_sets) or 'no SIMD flags read'}", variants=results,
                  weight_error=overall, worst_tensors_8bit=worst)


def fmt(v, spec: str) -> str:
    """A number in `spec`, or '-' where there is none."""
    return "-" if v is None else format(v, spec)


def write_report(report: Report, out: Path) -> None:
    (out / "report.json").write_text(report.model_dump_json(indent=2))
    lines = [f"# edgepilot report: {Path(report.source).name}", "",
             f"Dataset: {report.dataset} ({report.samples} samples). Reference for agreement: "
             f"{report.reference or 'none'}. Measured on {report.host} ({report.cpu}); batch 1.", "",
             "| variant | engine | size KiB | top-1 | top-5 | agree top-1 | max abs err | cosine | p50 ms | p90 ms "
             "| p99 ms | samples/s | peak RSS MiB | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report.variants:
        a, lat = r.agreement, r.latency
        note = "; ".join(r.flags + ([r.error] if r.error else []))
        lines.append(
            f"| {r.variant} | {r.engine or '-'} | {r.size_bytes / 1024:.1f} "
            f"| {fmt(r.top1, '.4f')} | {fmt(r.top5, '.4f')} "
            f"| {fmt(a and a.top1_agreement, '.4f')} | {fmt(a and a.max_abs_error, '.3g')} "
            f"| {fmt(a and a.cosine, '.5f')} "
            f"| {fmt(lat and lat.p50_ms, '.3f')} | {fmt(lat and lat.p90_ms, '.3f')} | {fmt(lat and lat.p99_ms, '.3f')} "
            f"| {fmt(lat and lat.throughput_sps, '.0f')} | {fmt(r.peak_rss_mb, '.0f')} | {note} |")
    if report.weight_error:
        lines += ["", "## Weight quantisation error by bit depth (symmetric, all weights)", "",
                  "| bits | scheme | MSE | max abs | SQNR dB | compression |", "|---:|---|---:|---:|---:|---:|"]
        for w in report.weight_error:
            lines.append(f"| {w['bits']} | {w['scheme']} | {w['mse']:.3g} | {w['max_abs']:.3g} | "
                         f"{fmt(w['sqnr_db'], '.1f')} | {w['compression']:g}x |")
        lines += ["", "Most sensitive tensors at 8 bits, per tensor: " + ", ".join(
            f"{t['name']} ({t['sqnr_db']:.1f} dB)" for t in report.worst_tensors_8bit)]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def write_html(report: Report, out: Path) -> None:
    """A self-contained report.html: the table of report.md and the figures embedded as PNG."""
    from edgepilot.evaluate import plots

    rows = [r for r in report.variants if not r.error]
    names = [r.variant for r in rows]
    colors = ["#DD8452" if "int8" in n else "#55A868" if ("fp16" in n or "float16" in n) else "#4C72B0" for n in names]
    figures = [
        ("Top-1 accuracy", plots.bars(names, [r.top1 for r in rows], "Top-1 accuracy per variant", "top-1", colors)),
        ("Latency", plots.bars(names, [r.latency.p50_ms if r.latency else None for r in rows],
                               "p50 latency per variant (batch 1)", "ms", colors)),
        ("Size", plots.bars(names, [r.size_bytes / 1024 for r in rows], "Size on disk", "KiB", colors)),
    ]
    points = {r.variant: (r.latency.p50_ms, r.top1) for r in rows if r.latency and r.top1 is not None}
    if points:
        figures.append(("Pareto", plots.pareto(points)))
    if report.weight_error:
        figures.append(("Weight quantisation error by bit depth", plots.bit_depth(report.weight_error)))
    md = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    table = _md_table_to_html(md)
    imgs = "\n".join(f'<h2>{html.escape(t)}</h2><img alt="{html.escape(t)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}">' for t, png in figures)
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>edgepilot report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,td:nth-child(2){text-align:left}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>edgepilot report: {html.escape(Path(report.source).name)}</h1>"
        f"<p>Dataset {html.escape(report.dataset)} ({report.samples} samples); reference "
        f"{html.escape(report.reference or 'none')}; measured on {html.escape(report.host)} "
        f"({html.escape(report.cpu)}).</p>{table}{imgs}</body></html>")


def _md_table_to_html(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return ""
    cells = [[html.escape(c.strip()) for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
