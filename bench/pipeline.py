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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepilot.assets import asset
from edgepilot.demo_faces import make_face_video, pipeline_config
from edgepilot.engines import open_session
from edgepilot.host import host_info
from edgepilot.runtime.pipeline import Pipeline, PipelineConfig
from edgepilot.runtime.quality import QualityChecker
from edgepilot.runtime.sources import open_source
from edgepilot.runtime.stages import Preprocessor

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5


def config(tmp: Path, video: Path, model: str) -> PipelineConfig:
    d = pipeline_config(tmp, video)
    d["model"]["path"] = str(asset(model))
    d["sinks"] = [{"type": "jsonl", "path": str(tmp / "results.jsonl"), "what": "all"}]
    d.pop("logging")
    d["workdir"] = str(tmp / "state")
    return PipelineConfig.model_validate(d)


def decoder_rate(cfg: PipelineConfig, pre: Preprocessor) -> tuple[float, list[np.ndarray]]:
    quality = QualityChecker(cfg.quality)
    tensors = []
    t0 = time.perf_counter()
    for item in open_source(cfg.sources[0]):
        item = quality.process(item)
        if item is not None:
            tensors.append(pre.process(item).tensor)
    return len(tensors) / (time.perf_counter() - t0), tensors


def model_rate(session, name: str, tensors: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for x in tensors:
        session.run({name: x[None]})
    return len(tensors) / (time.perf_counter() - t0)


def pipeline_rate(cfg: PipelineConfig) -> tuple[float, dict]:
    p = Pipeline(cfg)
    t0 = time.perf_counter()
    summary = p.run()
    return summary["counters"]["completed"] / (time.perf_counter() - t0), summary


def measure(tmp: Path, video: Path, model: str) -> dict:
    cfg = config(tmp, video, model)
    probe = Pipeline(cfg)  # the same thread plan, model and preprocessing the pipeline uses
    threads, pre = probe.plan.model_threads, probe.preprocess
    session = open_session(probe.model, cfg.model.engine, threads=threads)
    probe.run(max_items=1)
    _, tensors = decoder_rate(cfg, pre)
    model_rate(session, pre.spec.name, tensors[:20])  # warm-up
    dec, mod, pipe = [], [], []
    for _ in range(ROUNDS):
        dec.append(decoder_rate(cfg, pre)[0])
        mod.append(model_rate(session, pre.spec.name, tensors))
        rate, summary = pipeline_rate(cfg)
        pipe.append(rate)
    d, m, p = (statistics.median(v) for v in (dec, mod, pipe))
    ceiling = min(d, m)
    return {"model": model, "frames": len(tensors), "model_threads": threads, "rounds": ROUNDS,
            "decoder_fps": round(d, 1), "model_fps": round(m, 1), "pipeline_fps": round(p, 1),
            "ceiling_fps": round(ceiling, 1), "ratio": round(p / ceiling, 3),
            "all": {"decoder": [round(v, 1) for v in dec], "model": [round(v, 1) for v in mod],
                    "pipeline": [round(v, 1) for v in pipe]},
            "stages_ms_last_run": summary["stages_ms"]}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = tmp / "faces.mp4"
        make_face_video(video)
        results = [measure(tmp, video, m) for m in ("blazeface-short-range", "blazeface-back")]
    payload = {"host": host_info(), "video": "demo faces video, 640x480, 105 frames", "results": results}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = ["# Pipeline throughput vs min(decoder, model)", "",
             f"Median of {ROUNDS} alternating rounds, one process; litert, batch 1, "
             f"{results[0]['model_threads']} model thread(s), JSONL sink.", "",
             "| model | decoder fps | model fps | ceiling | pipeline fps | pipeline / ceiling |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['decoder_fps']} | {r['model_fps']} | {r['ceiling_fps']} | "
                     f"{r['pipeline_fps']} | {r['ratio'] * 100:.1f} % |")
    (out / "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
