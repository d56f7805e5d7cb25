"""The console of a run: third-party output goes to the run's log file, usage errors are one line with exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from builders import keras_model, sample
from builders.onnx import export_onnx

# Every way third-party code writes: a C library on fds 1 and 2, a child process, print, warnings, logging.
WRITER = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from edgepilot.logcapture import run_log, section
    logging.basicConfig()
    with run_log(Path(sys.argv[1]), verbose=sys.argv[2] == "1") as terminal:
        section("a pass")
        os.write(1, b"native stdout\\n"); os.write(2, b"native stderr\\n")
        subprocess.run(["echo", "child process"])
        print("python print")
        warnings.warn("a library warning")
        logging.getLogger("tensorflow").warning("a library log line")
        terminal.write("progress\\n")
    print("after the run")
""")
THIRD_PARTY = ("native stdout", "native stderr", "child process", "python print", "a library warning",
               "a library log line")


def cli(*args):
    return subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "150"})


@pytest.mark.parametrize("verbose", [False, True])
def test_run_log_takes_every_kind_of_third_party_output(tmp_path, verbose):
    log = tmp_path / "run.log"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(log), "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert all(t in text for t in THIRD_PARTY) and "--- a pass" in text
    assert proc.stdout == "progress\nafter the run\n"  # the terminal keeps only what the caller writes there
    assert all(t in proc.stderr for t in THIRD_PARTY) == verbose


@pytest.mark.slow
def test_optimize_console_is_short_and_the_log_holds_the_rest(tmp_path):
    keras_model("mlp").save(tmp_path / "m.keras")
    x = sample("mlp", batch=32)
    np.savez(tmp_path / "d.npz", x=x, y=np.argmax(x[:, :10], 1))
    out = tmp_path / "out"
    proc = cli("optimize", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--formats", "tflite,onnx",
               "--out", str(out), "--seconds", "0.1", "--calibration-samples", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) < 40, "\n".join(lines)
    assert "Saved artifact at" not in proc.stdout + proc.stderr  # TensorFlow's SavedModel dump
    log = (out / "optimize.log").read_text()
    assert "Saved artifact at" in log and "--- tflite-int8 (keras-to-tflite)" in log
    assert f"log: {out / 'optimize.log'}" in proc.stdout.replace("\n", "")


def test_a_family_with_no_path_from_the_source_is_said(tmp_path):
    ov = pytest.importorskip("openvino")
    ov.save_model(ov.convert_model(str(export_onnx("mlp", tmp_path / "m.onnx"))), str(tmp_path / "m.xml"))
    np.savez(tmp_path / "d.npz", x=sample("mlp", batch=16))
    out = tmp_path / "out"
    proc = cli("optimize", str(tmp_path / "m.xml"), "--data", str(tmp_path / "d.npz"), "--formats", "tflite",
               "--out", str(out), "--seconds", "0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = ("no pass chain builds tflite from the openvino source (chains to tflite start from keras, onnx, "
            "savedmodel, tflite, torch-export, torchscript)")
    assert f"tflite-int8-weights: skipped: {said}" in proc.stdout.replace("\n", "")
    lineage = {v["variant"]: v for v in json.loads((out / "lineage.json").read_text())["variants"]}
    assert lineage["tflite-int8"]["status"] == "skipped" and lineage["tflite-int8"]["reason"] == said


def test_usage_errors_are_one_line_with_exit_2(tmp_path):
    model = export_onnx("mlp", tmp_path / "m.onnx")
    (tmp_path / "afile").write_text("")
    np.savez(tmp_path / "d.npz", x=sample("mlp", batch=4))
    for args, message in [
        (("--out", str(tmp_path / "afile")), f"--out {tmp_path / 'afile'} is a file, not a folder"),
        (("--formats", "coreml"), "unknown format 'coreml'"),
    ]:
        proc = cli("optimize", str(model), "--data", str(tmp_path / "d.npz"), *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = cli("demo", "--out", str(tmp_path / "afile"))  # any command: a path that cannot be used
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: File exists: {tmp_path / 'afile'}"
