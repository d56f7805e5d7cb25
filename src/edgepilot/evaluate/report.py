"""Measure every variant the same way and write report.json + report.md."""
from __future__ import annotations

import base64
import html
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgepilot import catalog
from edgepilot.engines import all_engines, open_session
from edgepilot.errors import EdgepilotError
from edgepilot.evaluate.accuracy import predict
from edgepilot.evaluate.benchmark import BenchConfig, benchmark
from edgepilot.evaluate.datasets import Dataset, fit_to_input
from edgepilot.evaluate.latency import LatencyStats
from edgepilot.evaluate.tasks import HEADLINE, Agreement, TaskSpec, align, label_accuracy, ran_at, resolve, score
from edgepilot.evaluate.yardstick import Yardstick
from edgepilot.evaluate.yardstick import measure as measure_yardstick
from edgepilot.host import host_info
from edgepilot.model import Model
from edgepilot.runtime.decoders import PostprocessConfig
from edgepilot.shapes import shapes_for

log = logging.getLogger(__name__)


class VariantResult(BaseModel):
    variant: str
    format: str
    precision: str | None = None  # the catalogue's: fp32, fp16, bf16, int8, dynamic-int8, int8-weights
    engine: str | None = None
    threads: int | None = None  # what the engine ran with in the latency benchmark
    runtime_precision: str | None = None  # the arithmetic the engine reports it used ("as stored" where fixed)
    size_bytes: int = 0
    top1: float | None = None  # accuracy against class labels (classifiers on labelled data)
    top5: float | None = None
    agreement: Agreement | None = None  # the task metric and per-output errors against the reference
    # What the gates and `select` read: the top-1 accuracy lost against the reference where there are labels,
    # else 1 - the task's agreement with the reference.
    accuracy_drop: float | None = None
    int8: bool | None = None  # an int8 variant that really is: holds int8 ops and is smaller. None: not int8
    latency: LatencyStats | None = None
    load_ms: float | None = None
    peak_rss_mb: float | None = None
    arena_bytes: int | None = None  # TFLite Micro tensor arena, for TFLite variants it can run
    error: str | None = None
    flags: list[str] = []
    tries: list[str] = []  # settings tried after the variant failed the accuracy gate, with their task metric


class Report(BaseModel):
    source: str
    source_format: str | None = None
    source_precision: str | None = None  # what the source's weights are stored in, where its file says (TFLite)
    dataset: str
    samples: int
    reference: str | None
    host: str
    cpu: str
    host_gflops: float | None = None  # fp32 matrix-product rate measured when the report was made
    task: str | None = None  # e.g. "detection, blazeface decoder (inferred from the outputs)"
    task_metric: str | None = None  # the headline agreement metric, e.g. "top-1 agreement"
    labelled: bool = False  # whether accuracy against labels was measured (else: agreement with the reference)
    yardstick: Yardstick | None = None  # how host_gflops was measured (threads, method, spread)
    variants: list[VariantResult]
    # §3.1: weight quantisation error by bit depth, over all weights and for the worst tensors at 8 bits
    weight_error: list[dict] = []
    worst_tensors_8bit: list[dict] = []


@dataclass
class Reference:
    """The variant the others are compared with: its result, its outputs and the task they are read as."""

    variant: str
    result: VariantResult
    outputs: dict[str, np.ndarray]
    spec: TaskSpec


def evaluate_one(vid: str, model: Model, ds: Dataset, *, seconds: float = 2.0, threads: int | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None
                 ) -> tuple[VariantResult, dict[str, np.ndarray] | None]:
    """One variant's outputs in this process, then its latency and memory in a fresh subprocess.

    Latency is measured at `shapes` (the source model's, applied to this variant's inputs), else at
    the data's sample shape with batch 1.
    """
    engines = {n: e for n, e in all_engines().items() if e.available()[0]}
    spec = catalog.get(vid)
    engine = spec.engine if spec else next((n for n, e in engines.items() if model.format in e.formats), None)
    compute = spec.compute if spec else None
    # a TFLite Micro deliverable also holds C sources: what goes to flash is the model's bytes
    size = int(model.meta.get("model_bytes", model.size_bytes))
    r = VariantResult(variant=vid, format=model.format.value, precision=spec.precision if spec else None,
                      engine=engine, size_bytes=size)
    if engine not in engines:
        r.error = f"no engine here runs {model.format.value}" if engine is None else f"{engine} is not available here"
        return r, None
    outputs = None
    try:
        with open_session(model, engine, threads=threads, precision=compute) as s:
            x = fit_to_input(ds, s.inputs[0])
            outputs = predict(s, x)
            first = s.inputs[0]
            timed_at = shapes_for(s.inputs, shapes) if shapes else {} if first.is_static else {
                first.name: (1, *x.shape[1:])}
        b = benchmark(BenchConfig(model=str(model.path), engine=engine, threads=threads, precision=compute,
                                  seconds=seconds, shapes=timed_at))
        r.latency, r.load_ms, r.peak_rss_mb = b.latency, b.load_ms, b.peak_rss_mb
        r.threads, r.runtime_precision = b.threads, b.precision
        r.arena_bytes = _arena(model, engines)
    except EdgepilotError as e:
        r.error = str(e)
    return r, outputs


def score_variant(r: VariantResult, outputs: dict[str, np.ndarray], ref: Reference, labels: np.ndarray | None
                  ) -> None:
    """Set r's accuracy against labels, its agreement with the reference and the drop the gates read."""
    try:
        aligned = align(outputs, ref.spec, ref.outputs)
        r.top1, r.top5 = label_accuracy(ref.spec, aligned, labels)
        r.agreement = score(ref.spec, aligned, ref.outputs)
    except EdgepilotError as e:
        r.error = f"outputs do not match the reference {ref.variant}: {e.message}"
        return
    if r.top1 is not None and ref.result.top1 is not None:
        r.accuracy_drop = ref.result.top1 - r.top1
    else:
        r.accuracy_drop = 1.0 - r.agreement.value


def evaluate_variants(variants: dict[str, Model], ds: Dataset, *, seconds: float = 2.0, threads: int | None = None,
                      progress=None, task: str | None = None, postprocess: PostprocessConfig | None = None,
                      shapes: dict[str, tuple[int, ...]] | None = None,
                      reference: str | None = None) -> tuple[list[VariantResult], Reference | None]:
    """Every variant measured the same way and scored for its task against `reference` (the variant the source
    model already is) where it ran, else the first float32 reference that ran.

    Returns the results and the reference (for variants measured later, e.g. by the gate's retries)."""
    outputs: dict[str, dict[str, np.ndarray]] = {}
    results = []
    bar = progress.add_task("evaluating", total=len(variants)) if progress else None
    for vid, model in variants.items():
        if progress:
            progress.update(bar, description=f"evaluating {vid}")
        r, out = evaluate_one(vid, model, ds, seconds=seconds, threads=threads, shapes=shapes)
        if out is not None:
            outputs[vid] = out
        results.append(r)
        if progress:
            progress.advance(bar)
    reference = next((v for v in (reference, *catalog.REFERENCES) if v in outputs), None)
    ref = None
    if reference is not None:
        model = variants[reference]  # resolved at the shapes it ran at: a dynamic H/W has no decoder size
        sample = fit_to_input(ds.subset(1), model.inputs[0]).shape if model.inputs else ()
        spec = resolve(ran_at(model, sample, outputs[reference]), task, postprocess)
        ref_result = next(r for r in results if r.variant == reference)
        ref = Reference(reference, ref_result, align(outputs[reference], spec), spec)
        score_variant(ref_result, outputs[reference], ref, ds.y)  # the reference first: the others need its top-1
        for r in results:
            if r.variant in outputs and r is not ref_result:
                score_variant(r, outputs[r.variant], ref, ds.y)
    for r in results:
        check_int8(r, variants[r.variant], results, reference)
    _flag_slow_int8(results)
    return results, ref


def check_int8(r: VariantResult, model: Model, results: list[VariantResult], reference: str | None) -> None:
    """Set r.int8: an int8 variant that holds no int8 op, or is not smaller than its float sibling (same format and
    engine, else the reference), is not treated as int8; the flags say why."""
    from edgepilot.evaluate.sanity import int8_ops

    if r.precision not in (catalog.INT8, catalog.DYNAMIC_INT8):
        return
    siblings = [b for b in results if (b.format, b.engine) == (r.format, r.engine) and b.precision == catalog.FP32]
    base = siblings[0] if siblings else next((b for b in results if b.variant == reference), None)
    ops = int8_ops(model)
    smaller = base is None or r.size_bytes < base.size_bytes
    r.int8 = ops is not False and smaller
    if ops is False:
        r.flags.append("holds no int8 operation: it computes in float")
    if not smaller:
        r.flags.append(f"not smaller than {base.variant} ({r.size_bytes / 1024:.1f} vs "
                       f"{base.size_bytes / 1024:.1f} KiB): not quantised where it counts")


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
    """int8 is not faster on every CPU (without VNNI it often is not): say so with the measured ratio."""
    fp32 = {(r.format, r.engine): r for r in results if r.precision == catalog.FP32 and r.latency}
    for r in results:
        base = fp32.get((r.format, r.engine))  # same format on the same runtime: only precision differs
        # 5 % margin: a smaller difference is within run-to-run noise on a shared machine
        quantized = r.precision in (catalog.INT8, catalog.DYNAMIC_INT8)
        if quantized and r.latency and base and r.latency.p50_ms > 1.05 * base.latency.p50_ms:
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


def build_report(source: Model, ds: Dataset, results: list[VariantResult], reference: Reference | None,
                 analysed: Model | None = None) -> Report:
    """`analysed` is the float model whose weights the §3.1 analysis reads (ONNX or Keras)."""
    host = host_info()
    stick = measure_yardstick()
    overall, worst = weight_error(analysed) if analysed is not None else ([], [])
    spec = reference.spec if reference is not None else None
    return Report(source=str(source.path), source_format=source.format.value,
                  source_precision=catalog.source_precision(source), dataset=ds.name, samples=len(ds),
                  reference=reference.variant if reference is not None else None,
                  task=spec.describe() if spec else None, task_metric=HEADLINE[spec.task] if spec else None,
                  labelled=any(r.top1 is not None for r in results),
                  host=host.hostname, host_gflops=stick.gflops, yardstick=stick,
                  cpu=f"{host.cpu_model}, {host.logical_cores} cores, "
                  f"{', '.join(host.instruction_sets) or 'no SIMD flags read'}", variants=results,
                  weight_error=overall, worst_tensors_8bit=worst)


def fmt(v, spec: str) -> str:
    """A number in `spec`, or '-' where there is none."""
    return "-" if v is None else format(v, spec)


def _worst(a: Agreement | None, key: str, pick=max):
    values = [getattr(m, key) for m in a.outputs if getattr(m, key) is not None] if a else []
    return pick(values) if values else None


def _sqnr(a: Agreement | None) -> str:
    if a is None:
        return "-"
    worst = _worst(a, "sqnr_db", min)
    return "exact" if worst is None else f"{worst:.1f}"


# The task metric's columns: (header, value from the agreement, format)
_TASK_COLUMNS = {
    "classification": [("top-1 agree", lambda a: a.value, ".4f"),
                       ("top-5 agree", lambda a: _worst(a, "top5_agreement", min), ".4f")],
    "detection": [("precision", lambda a: a.precision, ".4f"), ("recall", lambda a: a.recall, ".4f"),
                  ("F1", lambda a: a.f1, ".4f"), ("mAP@0.5", lambda a: a.map50, ".4f")],
    "segmentation": [("mask IoU", lambda a: a.value, ".4f")],
    "tensors": [("cosine", lambda a: a.value, ".5f")],
}


def _task_of(report: Report) -> str:
    return next((r.agreement.task for r in report.variants if r.agreement), "tensors")


def write_report(report: Report, out: Path) -> None:
    (out / "report.json").write_text(report.model_dump_json(indent=2))
    task = _task_of(report)
    cols = _TASK_COLUMNS[task]
    labels = ["top-1 (labels)", "top-5 (labels)"] if report.labelled else []
    scores = (f"Task: {report.task}. The task columns are agreement with the reference {report.reference} "
              f"({report.task_metric}), not accuracy" if report.task else "No reference ran: no agreement")
    scores += ("; top-1/top-5 (labels) are accuracy against the dataset's labels." if report.labelled
               else "; the dataset has no labels, so no accuracy is measured.")
    head = ["variant", "engine", "size KiB", *labels, *(c[0] for c in cols), "max abs err", "SQNR dB",
            "p50 ms", "p90 ms", "p99 ms", "samples/s", "peak RSS MiB", "note"]
    own = f" ({report.source_format}, weights in {report.source_precision})" if report.source_precision else ""
    lines = [f"# edgepilot report: {Path(report.source).name}{own}", "",
             f"Dataset: {report.dataset} ({report.samples} samples). Measured on {report.host} ({report.cpu}); "
             f"batch 1.", "", scores, "", _row(head),
             _row(["---" if h in ("variant", "engine", "note") else "---:" for h in head])]
    for r in report.variants:
        a, lat = r.agreement, r.latency
        note = "; ".join(r.flags + ([r.error] if r.error else []))
        lines.append(_row([
            r.variant, r.engine or "-", f"{r.size_bytes / 1024:.1f}",
            *([fmt(r.top1, ".4f"), fmt(r.top5, ".4f")] if labels else []),
            *(fmt(get(a) if a else None, spec) for _, get, spec in cols),
            fmt(_worst(a, "max_abs_error"), ".3g"), _sqnr(a),
            fmt(lat and lat.p50_ms, ".3f"), fmt(lat and lat.p90_ms, ".3f"), fmt(lat and lat.p99_ms, ".3f"),
            fmt(lat and lat.throughput_sps, ".0f"), fmt(r.peak_rss_mb, ".0f"), note]))
    lines += _per_output(report, task)
    if report.weight_error:
        lines += ["", "## Weight quantisation error by bit depth (symmetric, all weights)", "",
                  "| bits | scheme | MSE | max abs | SQNR dB | compression |", "|---:|---|---:|---:|---:|---:|"]
        for w in report.weight_error:
            lines.append(f"| {w['bits']} | {w['scheme']} | {w['mse']:.3g} | {w['max_abs']:.3g} | "
                         f"{fmt(w['sqnr_db'], '.1f')} | {w['compression']:g}x |")
        lines += ["", "Most sensitive tensors at 8 bits, per tensor: " + ", ".join(
            f"{t['name']} ({t['sqnr_db']:.1f} dB)" for t in report.worst_tensors_8bit)]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def _per_output(report: Report, task: str) -> list[str]:
    extra = {"classification": ("top-1 agree", "top1_agreement"), "segmentation": ("mask IoU", "mask_iou")}.get(task)
    head = ["variant", "output", "max abs err", "max rel err", "SQNR dB", "cosine"] + ([extra[0]] if extra else [])
    rows = []
    for r in report.variants:
        for m in r.agreement.outputs if r.agreement else []:
            rows.append(_row([r.variant, m.output, f"{m.max_abs_error:.3g}", f"{m.max_rel_error:.3g}",
                              fmt(m.sqnr_db, ".1f") if m.sqnr_db is not None else "exact", f"{m.cosine:.5f}"]
                             + ([fmt(getattr(m, extra[1]), ".4f")] if extra else [])))
    if not rows:
        return []
    return ["", f"## Agreement with the reference {report.reference}, per output", "", _row(head),
            _row(["---", "---"] + ["---:"] * (len(head) - 2)), *rows]


def chart_series(report: Report) -> list[tuple[str, str, list[str], list[float]]]:
    """(title, unit, variants, values) per bar chart: each holds every variant that has its metric."""
    def series(title: str, unit: str, get) -> tuple[str, str, list[str], list[float]]:
        pairs = [(r.variant, get(r)) for r in report.variants]
        pairs = [(n, v) for n, v in pairs if v is not None]
        return title, unit, [n for n, _ in pairs], [v for _, v in pairs]

    charts = []
    if report.task_metric:
        charts.append(series(f"Agreement with the reference {report.reference}: {report.task_metric}",
                             report.task_metric, lambda r: r.agreement.value if r.agreement else None))
    if report.labelled:
        charts.append(series("Top-1 accuracy against the labels", "top-1", lambda r: r.top1))
    charts.append(series("p50 latency per variant (batch 1)", "ms", lambda r: r.latency.p50_ms if r.latency else None))
    charts.append(series("Size on disk", "KiB", lambda r: r.size_bytes / 1024 if r.size_bytes else None))
    return [c for c in charts if c[2]]


def _pareto_points(report: Report) -> tuple[str, dict[str, tuple[float, float]]]:
    """Latency against accuracy where there are labels, else against the task's agreement."""
    if report.labelled:
        return "top-1 accuracy (labels)", {r.variant: (r.latency.p50_ms, r.top1) for r in report.variants
                                           if r.latency and r.top1 is not None}
    return (f"agreement: {report.task_metric}",
            {r.variant: (r.latency.p50_ms, r.agreement.value) for r in report.variants if r.latency and r.agreement})


_COLORS = {catalog.INT8: "#DD8452", catalog.DYNAMIC_INT8: "#DD8452", catalog.INT8_WEIGHTS: "#CCB974",
           catalog.FP16: "#55A868", catalog.BF16: "#8172B3"}


def write_html(report: Report, out: Path) -> None:
    """A self-contained report.html: the tables of report.md and the figures embedded as PNG."""
    from edgepilot.evaluate import plots

    precision = {r.variant: r.precision for r in report.variants}
    figures = [(title, plots.bars(names, values, title, unit, [_COLORS.get(precision.get(n), "#4C72B0")
                                                               for n in names]))
               for title, unit, names, values in chart_series(report)]
    ylabel, points = _pareto_points(report)
    if points:
        figures.append(("Pareto", plots.pareto(points, ylabel=ylabel)))
    if report.weight_error:
        figures.append(("Weight quantisation error by bit depth", plots.bit_depth(report.weight_error)))
    md = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    imgs = "\n".join(f'<h2>{html.escape(t)}</h2><img alt="{html.escape(t)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}">' for t, png in figures)
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>edgepilot report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,td:nth-child(2){text-align:left}"
        f"img{{max-width:100%}}</style></head><body>{md_to_html(md)}{imgs}</body></html>")


_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def md_to_html(md: str) -> str:
    """The subset of Markdown report.md uses: headings, paragraphs and tables (separator rows are not rows)."""
    parts, table = [], []

    def flush() -> None:
        if table:
            cells = [[html.escape(c.strip()) for c in ln.strip().strip("|").split("|")] for ln in table]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()

    for ln in md.splitlines():
        if ln.startswith("|"):
            if not _SEPARATOR.match(ln):
                table.append(ln)
            continue
        flush()
        if ln.startswith("#"):
            level = min(len(ln) - len(ln.lstrip("#")), 3)
            parts.append(f"<h{level}>{html.escape(ln.lstrip('#').strip())}</h{level}>")
        elif ln.strip():
            parts.append(f"<p>{html.escape(ln)}</p>")
    flush()
    return "".join(parts)
