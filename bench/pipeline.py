"""Pipeline throughput against its ceiling: fps of the whole runtime vs min(decoder rate, model rate), one run.

The decoder rate is what one source thread does alone (read the video, quality checks, preprocess); the model rate
is what the inference workers do alone (session.run on already-preprocessed tensors, same engine and threads); the
pipeline runs both concurrently, plus post-processing, rules and a JSONL sink. The three are measured in
alternating rounds in one process, so machine noise hits them alike, and the medians are compared.
Two detectors: BlazeFace short-range (128 px, decoder-bound here) and BlazeFace back (256 px, heavier).
Writes bench/results/pipeline.{json,md}.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepilot.assets import asset
from edgepilot.demos.faces import make_face_video, pipeline_config
from edgepilot.engines import open_session
from edgepilot.host import host_info
from edgepilot.runtime.pipeline import Pipeline, PipelineConfig
from edgepilot.runtime.preprocess import Preprocessor
from edgepilot.runtime.quality import QualityChecker
from edgepilot.runtime.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5
FRAMES = 420  # the 105-frame video, looped four times: start-up is then a small part of each run


def config(tmp: Path, video: Path, model: str) -> PipelineConfig:
    d = pipeline_config(tmp, video)
    d["model"]["path"] = str(asset(model))
    d["sources"][0].update(loop=True, decode="process")
    d["sinks"] = [{"type": "jsonl", "path": str(tmp / "results.jsonl"), "what": "all"}]
    d.pop("logging")
    d["workdir"] = str(tmp / "state")
    return PipelineConfig.model_validate(d)


def decoder_rate(cfg: PipelineConfig, pre: Preprocessor) -> tuple[float, list[np.ndarray]]:
    quality = QualityChecker(cfg.quality)
    tensors = []
    t0 = time.perf_counter()
    source = open_source(cfg.sources[0])
    for item in source:
        item = quality.process(item)
        if item is not None:
            tensors.append(pre.process(item).tensor)
        if len(tensors) == FRAMES:
            break
    source.stop()
    return len(tensors) / (time.perf_counter() - t0), tensors


def model_rate(session, name: str, tensors: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for x in tensors:
        session.run({name: x[None]})
    return len(tensors) / (time.perf_counter() - t0)


def _busy_model(model_path: str, engine: str, threads: int, shape, stop) -> None:
    """In another process (no shared GIL): keep the model busy, so the decoder is measured beside it."""
    from edgepilot.model import Model

    model = Model.load(model_path)
    session = open_session(model, engine, threads=threads)
    x = np.zeros(shape, np.float32)
    while not stop.is_set():
        session.run({model.inputs[0].name: x})


def _busy_decoder(cfg_json: str, stop) -> None:
    cfg = PipelineConfig.model_validate_json(cfg_json)
    pre = Pipeline(cfg).preprocess
    while not stop.is_set():
        decoder_rate(cfg, pre)


def side_by_side(cfg: PipelineConfig, pre: Preprocessor, session, tensors, threads: int) -> tuple[float, float]:
    """Decoder rate while the model runs in another process, and model rate while the decoder does: what two
    processes get from these cores at once, with no GIL between them."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    busy = ctx.Process(target=_busy_model, args=(cfg.model.path, cfg.model.engine, threads,
                                                 (1, *tensors[0].shape), stop))
    busy.start()
    time.sleep(3)  # the child loads and warms up
    dec = decoder_rate(cfg, pre)[0]
    stop.set()
    busy.join()
    stop = ctx.Event()
    busy = ctx.Process(target=_busy_decoder, args=(cfg.model_dump_json(), stop))
    busy.start()
    time.sleep(3)
    mod = model_rate(session, pre.spec.name, tensors)
    stop.set()
    busy.join()
    return dec, mod


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (a `decode: process` decoder is waited for)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))


def pipeline_rate(cfg: PipelineConfig) -> tuple[float, float, dict]:
    """Frames per second after the first result (a decoder process's start is not frame time), and CPU
    milliseconds per frame summed over the pipeline's threads and processes."""
    p = Pipeline(cfg)
    c0 = cpu_s()
    summary = p.run(max_items=FRAMES)
    n = summary["counters"]["completed"]
    return summary["fps_after_first"], (cpu_s() - c0) / n * 1e3, summary


def measure(tmp: Path, video: Path, model: str) -> dict:
    cfg = config(tmp, video, model)
    probe = Pipeline(cfg)  # the same thread plan, model and preprocessing the pipeline uses
    threads, pre = probe.plan.model_threads, probe.preprocess
    session = open_session(probe.model, cfg.model.engine, threads=threads)
    probe.run(max_items=1)
    in_process = cfg.model_copy(deep=True)
    in_process.sources[0].decode = "thread"
    _, tensors = decoder_rate(in_process, pre)
    model_rate(session, pre.spec.name, tensors[:20])  # warm-up
    dec, mod, pipe, cpu, pipe_t, cpu_t, e2e = [], [], [], [], [], [], []
    for _ in range(ROUNDS):
        dec.append(decoder_rate(in_process, pre)[0])
        mod.append(model_rate(session, pre.spec.name, tensors))
        rate, cpu_ms, summary = pipeline_rate(cfg)
        pipe.append(rate)
        cpu.append(cpu_ms)
        e2e.append(summary["stages_ms"]["end_to_end"])
        rate, cpu_ms, _ = pipeline_rate(in_process)
        pipe_t.append(rate)
        cpu_t.append(cpu_ms)
    d, m, p = (statistics.median(v) for v in (dec, mod, pipe))
    ceiling = min(d, m)
    d2, m2 = side_by_side(in_process, pre, session, tensors, threads)
    stages_cpu_ms = 1e3 / d + 1e3 / m  # each stage alone, single-threaded: its wall time is its CPU time
    return {"model": model, "frames": len(tensors), "model_threads": threads, "rounds": ROUNDS,
            "decoder_fps": round(d, 1), "model_fps": round(m, 1), "pipeline_fps": round(p, 1),
            "ceiling_fps": round(ceiling, 1), "ratio": round(p / ceiling, 3),
            "decoder_fps_beside_model": round(d2, 1), "model_fps_beside_decoder": round(m2, 1),
            "ratio_to_side_by_side": round(p / min(d2, m2), 3),
            "cpu_ms_per_frame_stages_alone": round(stages_cpu_ms, 2),
            "cpu_ms_per_frame_pipeline": round(statistics.median(cpu), 2), "cores": os.cpu_count(),
            "pipeline_fps_decode_thread": round(statistics.median(pipe_t), 1),
            "cpu_ms_per_frame_decode_thread": round(statistics.median(cpu_t), 2),
            "end_to_end_ms": {k: round(statistics.median(r[k] for r in e2e), 2) for k in ("p50", "p99")},
            "all": {"decoder": [round(v, 1) for v in dec], "model": [round(v, 1) for v in mod],
                    "pipeline": [round(v, 1) for v in pipe], "pipeline_decode_thread": [round(v, 1) for v in pipe_t]},
            "stages_ms_last_run": summary["stages_ms"]}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = tmp / "faces.mp4"
        make_face_video(video)
        results = [measure(tmp, video, m) for m in ("blazeface-short-range", "blazeface-back")]
    payload = {"host": host_info(), "video": f"demo faces video, 640x480, 105 frames looped to {FRAMES}",
               "results": results}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = ["# Pipeline throughput vs min(decoder, model)", "",
             f"Median of {ROUNDS} alternating rounds, one process; litert, batch 1, "
             f"{results[0]['model_threads']} model thread(s), JSONL sink.", "",
             "The pipeline decodes in a child process (`decode: process`); `decode: thread` beside it.", "",
             "| model | decoder fps | model fps | min | pipeline fps (thread) | pipeline / min | side by side: "
             "decoder, model fps | pipeline / side-by-side min | CPU ms/frame: stages alone → pipeline (thread) "
             "| end-to-end p50 / p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['decoder_fps']} | {r['model_fps']} | {r['ceiling_fps']} | "
                     f"{r['pipeline_fps']} ({r['pipeline_fps_decode_thread']}) | {r['ratio'] * 100:.1f} % | "
                     f"{r['decoder_fps_beside_model']}, {r['model_fps_beside_decoder']} | "
                     f"{r['ratio_to_side_by_side'] * 100:.1f} % | {r['cpu_ms_per_frame_stages_alone']} → "
                     f"{r['cpu_ms_per_frame_pipeline']} ({r['cpu_ms_per_frame_decode_thread']}) | "
                     f"{r['end_to_end_ms']['p50']} / {r['end_to_end_ms']['p99']} |")
    (out / "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
