"""Pipeline throughput against its ceiling: fps of the whole runtime vs min(decoder rate, model rate), one run.

The decoder rate is what one source thread does alone (read the video, quality checks, preprocess); the model rate
is what the inference workers do alone (session.run on already-preprocessed tensors, same engine and threads); the
pipeline runs both concurrently, plus post-processing, rules and a JSONL sink. The three, and each stage beside
the other running flat out in another process, are measured in alternating rounds, so machine noise hits them
alike, and the medians are compared.
Three cases: BlazeFace short-range (128 px) on the 640x480 demo video, where the two stages run at about the same
rate; the same model on the video upscaled to 1280x960, where decoding is the slower stage; BlazeFace back (256 px)
on the 640x480 video, where the model is.

CPU is CPU time (getrusage, and /proc for the decoder process), never 1/fps: FFmpeg decodes on threads of its own,
so the decoder's wall time understates its CPU. The pipeline's CPU per frame is taken in its steady state, between
its WINDOW-th result and its WINDOW-th from last; the start-up (a decoder process's interpreter, imports and video
open) is reported apart, and the whole run's figure beside it.
Writes bench/results/pipeline.{json,md}; `--rounds 1 --models blazeface-short-range` for a short run.
"""
from __future__ import annotations

import argparse
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
from edgepilot.demos.faces import SIZE, make_face_video, pipeline_config
from edgepilot.engines import open_session
from edgepilot.host import host_info
from edgepilot.runtime.heap import hold_freed_memory
from edgepilot.runtime.item import Item
from edgepilot.runtime.pipeline import Pipeline, PipelineConfig
from edgepilot.runtime.preprocess import Preprocessor
from edgepilot.runtime.quality import QualityChecker
from edgepilot.runtime.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5
FRAMES = 420  # the 105-frame video, looped four times: start-up is then a small part of each run
WINDOW = 50  # the steady-state CPU is measured from this result to this many before the last
CASES = (("blazeface-short-range", SIZE), ("blazeface-short-range", (1280, 960)), ("blazeface-back", SIZE))
MODELS = tuple(dict.fromkeys(model for model, _ in CASES))
_TICK = os.sysconf("SC_CLK_TCK")


def config(tmp: Path, video: Path, model: str) -> PipelineConfig:
    d = pipeline_config(tmp, video)
    d["model"]["path"] = str(asset(model))
    d["sources"][0].update(loop=True, decode="process")
    d["sinks"] = [{"type": "jsonl", "path": str(tmp / "results.jsonl"), "what": "all"}]
    d.pop("logging")
    d["workdir"] = str(tmp / "state")
    return PipelineConfig.model_validate(d)


def decoder_rate(cfg: PipelineConfig, pre: Preprocessor) -> tuple[float, list[Item], float]:
    """Frames per second, the preprocessed items (without their frames), and CPU ms per frame (FFmpeg's and
    OpenCV's threads included)."""
    quality = QualityChecker(cfg.quality)
    items = []
    c0 = own_cpu_s()
    t0 = time.perf_counter()
    source = open_source(cfg.sources[0])
    for item in source:
        item = quality.process(item)
        if item is not None:
            items.append(pre.process(item))
            item.frame = None
        if len(items) == FRAMES:
            break
    source.stop()
    rate = len(items) / (time.perf_counter() - t0)
    return rate, items, (own_cpu_s() - c0) / len(items) * 1e3


def model_rate(session, name: str, tensors: list[np.ndarray]) -> tuple[float, float]:
    """Frames per second and CPU ms per frame of session.run alone."""
    c0 = own_cpu_s()
    t0 = time.perf_counter()
    for x in tensors:
        session.run({name: x[None]})
    return len(tensors) / (time.perf_counter() - t0), (own_cpu_s() - c0) / len(tensors) * 1e3


def output_cpu(probe: Pipeline, session, items: list[Item]) -> tuple[float, float]:
    """CPU ms per frame of what the pipeline's output thread does besides the two stages: post-processing, rules
    and the JSON line of every result; in a loop, then one frame after each inference, as the pipeline runs it
    (the model's run between two frames leaves the output code's caches cold)."""
    name = probe.preprocess.spec.name
    for item in items:
        item.outputs = {k: v[0] for k, v in session.run({name: item.tensor[None]}).items()}

    def deliver(item: Item) -> None:
        probe.postprocess.process(item)
        probe.rules.process(item)
        item.to_json()

    c0 = own_cpu_s()
    for item in items:
        deliver(item)
    in_loop = (own_cpu_s() - c0) / len(items) * 1e3
    after_inference = 0.0
    for item in items:
        session.run({name: item.tensor[None]})
        c0 = time.thread_time()  # this thread's clock: the model's own threads stay out of it
        deliver(item)
        after_inference += time.thread_time() - c0
    return in_loop, after_inference / len(items) * 1e3


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


def side_by_side(cfg: PipelineConfig, pre: Preprocessor, session, tensors,
                 threads: int) -> tuple[float, float, float, float]:
    """Decoder rate while the model runs in another process, and model rate while the decoder does: what two
    processes get from these cores at once, with no GIL between them; and each one's CPU ms per frame then (two
    busy cores run each stage slower than one: shared caches and memory, and the host's other vCPUs)."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    busy = ctx.Process(target=_busy_model, args=(cfg.model.path, cfg.model.engine, threads,
                                                 (1, *tensors[0].shape), stop))
    busy.start()
    time.sleep(3)  # the child loads and warms up
    dec, _, dec_cpu = decoder_rate(cfg, pre)
    stop.set()
    busy.join()
    stop = ctx.Event()
    busy = ctx.Process(target=_busy_decoder, args=(cfg.model_dump_json(), stop))
    busy.start()
    time.sleep(3)
    mod, mod_cpu = model_rate(session, pre.spec.name, tensors)
    stop.set()
    busy.join()
    return dec, mod, dec_cpu, mod_cpu


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (a `decode: process` decoder is waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own_cpu_s() + r.ru_utime + r.ru_stime


def _process_cpu_s(pid: int | None) -> float:
    """CPU seconds of a running process, its ended threads included (to the kernel's tick)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def pipeline_rate(cfg: PipelineConfig) -> tuple[float, dict, dict]:
    """Frames per second after the first result (a decoder process's start is not frame time), and CPU
    milliseconds per frame summed over the pipeline's threads and processes: in the steady state (between the
    WINDOW-th result and the WINDOW-th from last), over the whole run, and the start-up's CPU seconds."""
    p = Pipeline(cfg)
    marks: dict[int, tuple[float, float]] = {}
    completed = p.stats.completed

    def count(n: int = 1) -> None:  # in the output thread, at each result: no sampling thread to perturb the run
        completed(n)
        if (done := p.stats.counters["completed"]) in (WINDOW, FRAMES - WINDOW):
            marks[done] = own_cpu_s(), _process_cpu_s(getattr(p.sources[0], "decoder_pid", None))

    p.stats.completed = count
    c0 = cpu_s()
    summary = p.run(max_items=FRAMES)
    n = summary["counters"]["completed"]
    whole = (cpu_s() - c0) / n * 1e3
    (s0, d0), (s1, d1) = marks[WINDOW], marks[FRAMES - WINDOW]
    steady = ((s1 - s0) + (d1 - d0)) / (FRAMES - 2 * WINDOW) * 1e3
    start = max(0.0, (cpu_s() - c0) - steady * n / 1e3)  # what the run took beyond its frames at the steady rate
    return summary["fps_after_first"], {"steady": steady, "whole": whole, "start_s": start}, summary


def upscaled(video: Path, size: tuple[int, int]) -> Path:
    """The video at a camera's resolution (bicubic, same codec and frame rate): decoding then costs more."""
    import cv2

    out = video.with_name(f"{video.stem}-{size[0]}x{size[1]}{video.suffix}")
    cap = cv2.VideoCapture(str(video))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS), size)
    while (frame := cap.read()[1]) is not None:
        writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC))
    writer.release()
    cap.release()
    return out


def measure(tmp: Path, video: Path, size: tuple[int, int], model: str) -> dict:
    cfg = config(tmp, video, model)
    probe = Pipeline(cfg)  # the same thread plan, model and preprocessing the pipeline uses
    threads, pre = probe.plan.model_threads, probe.preprocess
    cfg.sources[0].decode_threads = probe.plan.ffmpeg_threads  # the stages alone decode as the pipeline does
    session = open_session(probe.model, cfg.model.engine, threads=threads)
    probe.run(max_items=1)
    in_process = cfg.model_copy(deep=True)
    in_process.sources[0].decode = "thread"
    _, items, _ = decoder_rate(in_process, pre)
    tensors = [item.tensor for item in items]
    model_rate(session, pre.spec.name, tensors[:20])  # warm-up
    dec, mod, dec_cpu, mod_cpu, pipe, cpu, pipe_t, cpu_t, e2e = [], [], [], [], [], [], [], [], []
    beside: list[tuple[float, float, float, float]] = []  # decoder, model fps; their CPU ms per frame
    for _ in range(ROUNDS):
        rate, _, cpu_ms = decoder_rate(in_process, pre)
        dec.append(rate)
        dec_cpu.append(cpu_ms)
        rate, cpu_ms = model_rate(session, pre.spec.name, tensors)
        mod.append(rate)
        mod_cpu.append(cpu_ms)
        rate, cpu_ms, summary = pipeline_rate(cfg)
        pipe.append(rate)
        cpu.append(cpu_ms)
        e2e.append(summary["stages_ms"]["end_to_end"])
        rate, cpu_ms, _ = pipeline_rate(in_process)
        pipe_t.append(rate)
        cpu_t.append(cpu_ms)
        beside.append(side_by_side(in_process, pre, session, tensors, threads))
    d, m, p = (statistics.median(v) for v in (dec, mod, pipe))
    ceiling = min(d, m)
    d2, m2, dc2, mc2 = (statistics.median(v) for v in zip(*beside))
    dc, mc = statistics.median(dec_cpu), statistics.median(mod_cpu)
    out_ms, out_after_ms = output_cpu(probe, session, items)

    def med(runs: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 2)

    return {"model": model, "video": f"{size[0]}x{size[1]}", "frames": len(tensors), "model_threads": threads,
            "rounds": ROUNDS,
            "decoder_fps": round(d, 1), "model_fps": round(m, 1), "pipeline_fps": round(p, 1),
            "ceiling_fps": round(ceiling, 1), "ratio": round(p / ceiling, 3),
            "decoder_fps_beside_model": round(d2, 1), "model_fps_beside_decoder": round(m2, 1),
            "ratio_to_side_by_side": round(p / min(d2, m2), 3),
            "cpu_ms_per_frame_decoder_alone": round(dc, 2), "cpu_ms_per_frame_model_alone": round(mc, 2),
            "cpu_ms_per_frame_stages_alone": round(dc + mc, 2),
            "cpu_ms_per_frame_stages_side_by_side": round(dc2 + mc2, 2),
            "cpu_ratio_to_stages_and_output_alone": round(med(cpu, "steady") / (dc + mc + out_ms), 3),
            "cpu_ratio_to_stages_side_by_side_and_output": round(med(cpu, "steady") / (dc2 + mc2 + out_ms), 3),
            "cpu_ms_per_frame_output_alone": round(out_ms, 2),
            "cpu_ms_per_frame_output_after_each_inference": round(out_after_ms, 2),
            "cpu_ms_per_frame_pipeline": med(cpu, "steady"), "cpu_ms_per_frame_pipeline_whole_run": med(cpu, "whole"),
            "start_cpu_s": med(cpu, "start_s"), "cores": os.cpu_count(),
            "pipeline_fps_decode_thread": round(statistics.median(pipe_t), 1),
            "cpu_ms_per_frame_decode_thread": med(cpu_t, "steady"),
            "cpu_ms_per_frame_decode_thread_whole_run": med(cpu_t, "whole"), "start_cpu_s_decode_thread":
                med(cpu_t, "start_s"),
            "end_to_end_ms": {k: round(statistics.median(r[k] for r in e2e), 2) for k in ("p50", "p99")},
            "all": {"decoder": [round(v, 1) for v in dec], "model": [round(v, 1) for v in mod],
                    "pipeline": [round(v, 1) for v in pipe], "pipeline_decode_thread": [round(v, 1) for v in pipe_t],
                    "decoder_beside_model": [round(b[0], 1) for b in beside],
                    "model_beside_decoder": [round(b[1], 1) for b in beside],
                    "cpu_pipeline": [round(r["steady"], 2) for r in cpu],
                    "cpu_pipeline_decode_thread": [round(r["steady"], 2) for r in cpu_t]},
            "stages_ms_last_run": summary["stages_ms"]}


def main() -> None:
    global ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternating rounds (default {ROUNDS})")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    ROUNDS = args.rounds
    hold_freed_memory()  # as the pipeline's processes do: the stages alone are measured with the same heap
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = tmp / "faces.mp4"
        make_face_video(video)
        results = [measure(tmp, video if size == SIZE else upscaled(video, size), size, model)
                   for model, size in CASES if model in args.models]
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    payload = {"host": host_info(), "video": f"demo faces video, 640x480 (and upscaled), 105 frames looped to {FRAMES}",
               "load_average_1min_start_end": load, "results": results}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = ["# Pipeline throughput vs min(decoder, model)", "",
             f"Median of {ROUNDS} alternating rounds, one process; litert, batch 1, "
             f"{results[0]['model_threads']} model thread(s), JSONL sink.", "",
             "The pipeline decodes in a child process (`decode: process`); `decode: thread` beside it.", "",
             f"Load average (1 min) at the start and the end: {load[0]} / {load[1]} on {os.cpu_count()} cores "
             "(other work on the machine slows every column; the rounds alternate so that it hits them alike).", "",
             "CPU is CPU time (FFmpeg's decode threads included), not 1/fps. Stages alone: the decoder (read, "
             "quality checks, preprocess) plus the model; the pipeline also post-processes, applies the rules and "
             "writes a JSON line per frame (the output column: those alone, in a loop and one frame after each "
             "inference, as the pipeline runs them: the second is the cost of the same code on caches the model has "
             "just used). Side by side, each stage's CPU is "
             "taken while the other runs flat out in another process (two busy cores run each stage slower than "
             "one: shared caches and memory bandwidth). The pipeline's CPU is its steady "
             f"state (from its {WINDOW}th result to its {WINDOW}th from last); the whole run with the start-up "
             "(a decoder process starts an interpreter) and the start-up's CPU seconds follow it.", "",
             "| model | video | decoder fps | model fps | min | pipeline fps (thread) | pipeline / min | side by side: "
             "decoder, model fps | pipeline / side-by-side min | CPU ms/frame: decoder + model alone = sum, "
             "output alone: in a loop, after each inference | CPU ms/frame side by side: decoder + model | "
             "CPU ms/frame pipeline, steady (thread) | "
             "pipeline CPU / (stages + output): alone, side by side | whole run (thread); start-up CPU s "
             "| end-to-end p50 / p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['video']} | {r['decoder_fps']} | {r['model_fps']} | {r['ceiling_fps']} | "
                     f"{r['pipeline_fps']} ({r['pipeline_fps_decode_thread']}) | {r['ratio'] * 100:.1f} % | "
                     f"{r['decoder_fps_beside_model']}, {r['model_fps_beside_decoder']} | "
                     f"{r['ratio_to_side_by_side'] * 100:.1f} % | {r['cpu_ms_per_frame_decoder_alone']} + "
                     f"{r['cpu_ms_per_frame_model_alone']} = {r['cpu_ms_per_frame_stages_alone']}, "
                     f"{r['cpu_ms_per_frame_output_alone']}, {r['cpu_ms_per_frame_output_after_each_inference']} | "
                     f"{r['cpu_ms_per_frame_stages_side_by_side']} | "
                     f"{r['cpu_ms_per_frame_pipeline']} ({r['cpu_ms_per_frame_decode_thread']}) | "
                     f"{r['cpu_ratio_to_stages_and_output_alone']:.2f}, "
                     f"{r['cpu_ratio_to_stages_side_by_side_and_output']:.2f} | "
                     f"{r['cpu_ms_per_frame_pipeline_whole_run']} "
                     f"({r['cpu_ms_per_frame_decode_thread_whole_run']}); {r['start_cpu_s']} "
                     f"({r['start_cpu_s_decode_thread']}) | "
                     f"{r['end_to_end_ms']['p50']} / {r['end_to_end_ms']['p99']} |")
    (out / "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
