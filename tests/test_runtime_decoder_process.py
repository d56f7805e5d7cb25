"""`decode: process`: a video decoded, checked and preprocessed in a child process, frames handed back through shared
memory. Same results as the in-process path; a killed decoder is restarted and loses no frame; the shared memory
is gone after every way the pipeline can end; the pipeline's processes keep a frame loop's memory instead of
faulting it in again every frame."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from edgepilot.assets import asset
from edgepilot.errors import UnavailableError

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    from edgepilot.demos.faces import make_face_video

    try:
        asset("blazeface-short-range", download=False)
    except UnavailableError as e:
        pytest.skip(str(e))
    video = tmp_path_factory.mktemp("video") / "faces.mp4"
    make_face_video(video, download=False)
    return video


def config(tmp: Path, video: Path, decode: str, **source) -> dict:
    from edgepilot.demos.faces import pipeline_config

    d = pipeline_config(tmp, video)
    d["sources"][0].update(decode=decode, **source)
    d["sinks"] = [{"type": "jsonl", "path": str(tmp / f"{decode}.jsonl"), "what": "all"}]
    d.pop("logging")
    d["workdir"] = str(tmp / "state")
    return d


def segments(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/edgepilot-{pid}-*")


@pytest.mark.parametrize("skip_blurred", [False, True], ids=["every-frame", "quality-skips"])
def test_frames_and_results_are_those_of_the_in_process_path(tmp_path, face_video, skip_blurred):
    """Also with the quality check dropping frames in the decoder process (the slot a video decodes into is then
    kept for the next frame)."""
    from edgepilot.runtime.pipeline import Pipeline, PipelineConfig

    runs = {}
    for decode in ("thread", "process"):
        d = config(tmp_path, face_video, decode)
        if skip_blurred:  # the demo video's frames score 370-2030: about a quarter is dropped
            d["quality"] = {"blur_var": 1365.0, "skip": ["blurred"]}
        summary = Pipeline(PipelineConfig.model_validate(d)).run()
        lines = [json.loads(line) for line in (tmp_path / f"{decode}.jsonl").read_text().splitlines()]
        runs[decode] = summary, [(r["seq"], r["meta"]["frame_index"], r.get("result"),
                                  [(e["rule"], e["kind"], e["state"], e["message"]) for e in r.get("events", [])])
                                 for r in lines if "seq" in r]
    (thread, t_items), (process, p_items) = runs["thread"], runs["process"]
    kept = 105 - thread["counters"].get("skipped_quality", 0)
    assert (kept < 90) == skip_blurred and process["counters"].get("skipped_quality", 0) == 105 - kept
    assert len(p_items) == kept and p_items == t_items  # every frame kept, the same boxes, scores and events
    assert process["counters"]["completed"] == thread["counters"]["completed"] == kept
    assert process["quality"] == thread["quality"] and process["quality"]["checked"] == 105
    assert process["stages_ms"]["end_to_end"]["n"] == kept and process["stages_ms"]["end_to_end"]["p99"] > 0
    assert segments(os.getpid()) == []


def test_decode_threads_auto_follow_the_thread_plan(tmp_path, face_video):
    from edgepilot.runtime.pipeline import Pipeline, PipelineConfig

    for decode in ("thread", "process"):
        p = Pipeline(PipelineConfig.model_validate(config(tmp_path, face_video, decode)))
        try:
            assert p.sources[0].cfg.decode_threads == p.plan.ffmpeg_threads >= 1
            assert p.summary()["threads"]["ffmpeg_threads"] == p.plan.ffmpeg_threads
        finally:
            p._close_all()
    p = Pipeline(PipelineConfig.model_validate(config(tmp_path, face_video, "thread", decode_threads=0)))
    p._close_all()
    assert p.sources[0].cfg.decode_threads == 0  # said in the YAML: kept


def test_a_killed_decoder_is_restarted_and_no_frame_is_lost_or_repeated(tmp_path, face_video):
    from edgepilot.runtime.pipeline import Pipeline, PipelineConfig

    pipeline = Pipeline(PipelineConfig.model_validate(config(tmp_path, face_video, "process", realtime=True)))
    source = pipeline.sources[0]
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    deadline = time.monotonic() + 60
    while pipeline.stats.counters["completed"] < 20:
        assert time.monotonic() < deadline and runner.is_alive()
        time.sleep(0.05)
    first = source.decoder_pid
    os.kill(first, signal.SIGKILL)
    runner.join(120)
    assert not runner.is_alive()
    summary = pipeline.summary()
    indices = [json.loads(line)["meta"]["frame_index"]
               for line in (tmp_path / "process.jsonl").read_text().splitlines() if '"seq"' in line]
    assert indices == list(range(105))
    assert summary["sources_detail"][source.id]["decoder_restarts"] == 1 and source.decoder_pid != first
    assert [r for r in summary["problems"]] == []
    assert segments(os.getpid()) == []


@pytest.mark.parametrize("ending", ["SIGTERM", "SIGINT", "decoder crash then SIGTERM", "SIGKILL"])
def test_shared_memory_is_released_however_the_pipeline_ends(tmp_path, face_video, ending):
    cfg = config(tmp_path, face_video, "process", loop=True, realtime=True)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "edgepilot", "run", str(tmp_path / "p.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not segments(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
        if ending.startswith("decoder crash"):
            child = int(subprocess.check_output(["pgrep", "-P", str(proc.pid), "-f", "decoder_child"]).split()[0])
            os.kill(child, signal.SIGKILL)
            time.sleep(2)  # restarted into the same ring
            assert len(segments(proc.pid)) == 1
        getattr(proc, "kill" if ending == "SIGKILL" else "send_signal")(
            *(() if ending == "SIGKILL" else (signal.SIGINT if ending == "SIGINT" else signal.SIGTERM,)))
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if ending == "SIGKILL":  # nothing in the process can run: Python's resource tracker removes it after
        deadline = time.monotonic() + 30
        while segments(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        assert proc.returncode == 0, proc.stderr.read()
    assert segments(proc.pid) == []


def test_a_process_source_read_outside_a_pipeline_hands_out_copies_and_never_stalls(face_video):
    """A consumer that keeps items without calling done() (a script, a benchmark) gets copies: more frames than
    the ring has slots go through, equal to the in-process decoder's."""
    from edgepilot.runtime.sources import open_source

    def frames(decode: str) -> list:
        source = open_source({"type": "video", "path": str(face_video), "decode": decode})
        try:
            return [item.frame for item in source]
        finally:
            source.stop()

    process, thread = frames("process"), frames("thread")
    assert len(process) == len(thread) == 105
    assert all((a == b).all() and a.base is None for a, b in zip(process, thread))


FRAME_LOOP = """
import resource, sys
import numpy as np
from edgepilot.runtime.heap import hold_freed_memory
held = sys.argv[1] == "hold" and hold_freed_memory()
def frame():  # a frame's arrays: a 640x480 BGR copy, its 256x256 float tensor, a small resize
    a = np.ones((480, 640, 3), np.uint8); b = np.ones((256, 256, 3), np.float32); c = np.ones((256, 256, 3), np.uint8)
    del a, b, c
for _ in range(10):
    frame()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    frame()
print(held, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 100)
"""


def test_the_pipelines_processes_keep_a_frame_loops_memory_instead_of_faulting_it_in_every_frame():
    def faults(mode):
        run = subprocess.run([sys.executable, "-c", FRAME_LOOP, mode], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        held, per_frame = run.stdout.split()
        return held == "True", float(per_frame)

    held, with_hold = faults("hold")
    if not held:
        pytest.skip("the C library is not glibc: its heap is left as it is")
    _, without = faults("default")
    assert with_hold < 2 < 50 < without, (with_hold, without)  # glibc gives the pages back on every free otherwise
