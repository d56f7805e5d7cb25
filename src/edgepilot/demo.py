"""The demo: train a small CNN on scikit-learn's digits, convert it for every engine here, benchmark each.

Everything runs offline on data a package ships. Each variant is measured the same way: top-1
accuracy on the held-out digits in this process, then latency and memory in a fresh subprocess.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgepilot.engines import all_engines, open_session
from edgepilot.errors import EdgepilotError
from edgepilot.evaluate.benchmark import BenchConfig, benchmark
from edgepilot.model import Model
from edgepilot.optional import require
from edgepilot.passes import PassContext, get_pass

log = logging.getLogger(__name__)

# (variant id, pass, options, source variant): a fixed plan until the optimizer plans by target.
PLAN = [
    ("tflite-fp32", "keras-to-tflite", {"precision": "float32"}, "keras"),
    ("tflite-dynamic", "keras-to-tflite", {"precision": "dynamic"}, "keras"),
    ("tflite-fp16", "keras-to-tflite", {"precision": "float16"}, "keras"),
    ("tflite-int8", "keras-to-tflite", {"precision": "int8"}, "keras"),
    ("onnx-fp32", "keras-to-onnx", {}, "keras"),
    ("openvino-fp32", "to-openvino", {"precision": "fp32"}, "onnx-fp32"),
    ("mnn-fp32", "onnx-to-mnn", {"precision": "fp32"}, "onnx-fp32"),
    ("ncnn-fp32", "onnx-to-ncnn", {"precision": "fp32"}, "onnx-fp32"),
]


@dataclass
class Row:
    variant: str
    engine: str
    format: str
    size_kib: float
    accuracy: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (shipped with the package), scaled to [0, 1], NHWC, 80/20 split."""
    datasets = require("sklearn.datasets", "tf")
    d = datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # a fixed shuffle for a reproducible split
    x, y = x[order], y[order]
    n = int(len(x) * 0.8)
    return x[:n], y[:n], x[n:], y[n:]


def train_cnn(x: np.ndarray, y: np.ndarray, path: Path) -> Model:
    keras = require("keras", "tf")
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([
        keras.Input(x.shape[1:], name="input"),
        L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
        L.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    model.save(path)
    return Model.load(path)


def accuracy(model: Model, engine: str, x: np.ndarray, y: np.ndarray) -> float:
    with open_session(model, engine, threads=1) as s:
        out = s.run({s.inputs[0].name: x})[s.outputs[0].name]
    return float((out.reshape(len(x), -1).argmax(1) == y).mean())


def run_demo(out: Path, seconds: float = 2.0, threads: int | None = None) -> list[Row]:
    console = Console(width=max(Console().width, 100))  # a pipe reports 80 columns: too narrow
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits_split()
    models: dict[str, Model] = {}
    rows: list[Row] = []
    engines = {n: e for n, e in all_engines().items() if e.available()[0]}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training a CNN on scikit-learn's digits", total=None)
        models["keras"] = train_cnn(x_train, y_train, out / "digits_cnn.keras")
        progress.update(task, description="converting", total=len(PLAN), completed=0)
        for variant, pass_name, options, source in PLAN:
            progress.update(task, description=f"converting {variant}")
            p = get_pass(pass_name)
            ctx = PassContext(out / "variants" / variant, calibration={"input": x_train[:200]})
            reasons = p.why_not(models[source], ctx) if source in models else [f"no {source} variant"]
            try:
                if reasons:
                    raise EdgepilotError("; ".join(reasons))
                models[variant] = p.run(models[source], p.options(**options), ctx)
            except EdgepilotError as e:  # one failed conversion never stops the others
                rows.append(Row(variant, "-", "-", 0.0, error=str(e)))
            progress.advance(task)
        pairs = [(v, m, name) for v, m in models.items() if v != "keras"
                 for name, e in engines.items() if m.format in e.formats]
        progress.update(task, description="benchmarking", total=len(pairs), completed=0)
        for variant, model, engine in pairs:
            progress.update(task, description=f"benchmarking {variant} on {engine}")
            row = Row(variant, engine, model.format.value, model.size_bytes / 1024)
            try:
                row.accuracy = accuracy(model, engine, x_test, y_test)
                r = benchmark(BenchConfig(model=str(model.path), engine=engine, threads=threads, seconds=seconds))
                row.p50_ms, row.p99_ms = r.latency.p50_ms, r.latency.p99_ms
                row.throughput, row.peak_rss_mb = r.latency.throughput_sps, r.peak_rss_mb
            except EdgepilotError as e:
                row.error = str(e)
            rows.append(row)
            progress.advance(task)
    _write(out, rows, len(x_test))
    _print(console, rows, out, len(x_test))
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _write(out: Path, rows: list[Row], n_test: int) -> None:
    (out / "results.json").write_text(json.dumps(
        {"dataset": f"scikit-learn digits, {n_test} held-out images", "rows": [r.__dict__ for r in rows]}, indent=2))
    lines = ["| variant | engine | size KiB | top-1 | p50 ms | p99 ms | samples/s | peak RSS MiB | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.engine} | {r.size_kib:.1f} | {_fmt(r.accuracy, '.3f')} | "
                     f"{_fmt(r.p50_ms, '.3f')} | {_fmt(r.p99_ms, '.3f')} | {_fmt(r.throughput, '.0f')} | "
                     f"{_fmt(r.peak_rss_mb, '.0f')} | {r.error or ''} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _print(console: Console, rows: list[Row], out: Path, n_test: int) -> None:
    t = Table(title=f"digits CNN, every variant on every engine here (top-1 on {n_test} held-out images; batch 1)")
    for col in ("variant", "engine", "KiB", "top-1", "p50 ms", "p99 ms", "samples/s", "peak MiB"):
        t.add_column(col, justify="left" if col in ("variant", "engine") else "right", no_wrap=True)
    for r in rows:
        if not r.error:
            t.add_row(r.variant, r.engine, f"{r.size_kib:.1f}", _fmt(r.accuracy, ".3f"), _fmt(r.p50_ms, ".3f"),
                      _fmt(r.p99_ms, ".3f"), _fmt(r.throughput, ".0f"), _fmt(r.peak_rss_mb, ".0f"))
    console.print(t)
    for r in rows:
        if r.error:
            console.print(f"[yellow]{r.variant} on {r.engine}: {r.error}[/yellow]", soft_wrap=True)
    console.print(f"results: {out / 'results.md'} and {out / 'results.json'}")
