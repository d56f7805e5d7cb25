"""Hostile model files: mutated ONNX, TFLite, MNN, ncnn and OpenVINO IR through `edgepilot inspect` and
`edgepilot bench`, each run in its own process. A run passes when it exits 0, or non-zero with one error line;
it fails on a death by signal, a Python traceback, or a hang (past --timeout).

Seeds: the tests' tiny CNN exported to ONNX and converted to MNN, ncnn and OpenVINO by edgepilot's own passes, and
a real BlazeFace `.tflite` out of its wheel. Mutations (seeded, reproducible): bit flips, byte runs overwritten with
0x00/0xff/random, truncation, a chunk deleted, duplicated or inserted, and the numbers in ncnn/OpenVINO text rewritten.
Writes bench/results/fuzz.{json,md}; `--count N` runs N mutants per format (the issue asks 300 ONNX, 300 TFLite,
50 of each other format). Failures are kept under <out>/fuzz-failures/ for replay.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_COUNTS = {"onnx": 300, "tflite": 300, "mnn": 50, "ncnn": 50, "openvino": 50}


def seeds(work: Path) -> dict[str, list[Path]]:
    """Each format's seed files; the first file of a list is the one mutated, the rest are copied beside it."""
    from builders.onnx import export_onnx
    from edgepilot.assets import asset
    from edgepilot.model import Model
    from edgepilot.passes import PassContext, get_pass

    work.mkdir(parents=True, exist_ok=True)
    onnx = export_onnx("cnn", work / "cnn.onnx")
    out = {"onnx": [onnx], "tflite": [asset("blazeface-short-range", download=False)]}
    for fmt, name in (("mnn", "onnx-to-mnn"), ("ncnn", "onnx-to-ncnn"), ("openvino", "to-openvino")):
        p = get_pass(name)
        m = p.run(Model.load(onnx), p.options(precision="fp32"), PassContext(work / fmt))
        files = list(m.files) if m.files else [m.path]
        first = [f for f in files if f.suffix in (".param", ".xml", ".mnn")][:1] or files[:1]
        out[fmt] = first + [f for f in files if f not in first]
    return out


def mutate(data: bytes, rng: random.Random, text: bool) -> tuple[bytes, str]:
    b = bytearray(data)
    kind = rng.choice(["flip", "overwrite", "truncate", "delete", "duplicate", "insert"]
                      + (["numbers"] * 3 if text else []))
    n = len(b)
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        i, k = rng.randrange(n), rng.randint(1, 64)
        fill = rng.choice([b"\x00", b"\xff", None])
        b[i:i + k] = (fill * k) if fill else bytes(rng.randrange(256) for _ in range(k))
    elif kind == "truncate":
        b = b[:rng.randrange(n)]
    elif kind == "delete":
        i = rng.randrange(n)
        del b[i:i + rng.randint(1, 256)]
    elif kind == "duplicate":
        i = rng.randrange(n)
        b[i:i] = b[i:i + rng.randint(1, 256)]
    elif kind == "insert":
        i = rng.randrange(n)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:  # numbers in a text format: dims and counts become huge, negative or zero
        s = b.decode("utf-8", "replace")
        spots = list(re.finditer(r"\d+", s))
        for m in rng.sample(spots, min(len(spots), rng.randint(1, 4))):
            s = s[:m.start()] + rng.choice(["0", "-1", "99999999", "1e38", "4294967297"]) + s[m.end():]
        b = bytearray(s.encode())
    return bytes(b), kind


def classify(proc: subprocess.CompletedProcess | None) -> str:
    if proc is None:
        return "hang"
    if proc.returncode < 0:
        return f"signal {-proc.returncode}"
    if "Traceback (most recent call last)" in proc.stderr:
        return "traceback"
    if proc.returncode == 0:
        return "ok"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return "one-line error" if len(errors) == 1 else "unclear failure"


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def fuzz_one(fmt: str, files: list[Path], i: int, work: Path, timeout: float, keep: Path) -> list[dict]:
    rng = random.Random(f"{fmt}-{i}")
    folder = work / f"{fmt}-{i:04d}"
    folder.mkdir()
    target = folder / files[0].name
    for extra in files[1:]:
        shutil.copy(extra, folder / extra.name)
    data, kind = mutate(files[0].read_bytes(), rng, text=files[0].suffix in (".param", ".xml"))
    target.write_bytes(data)
    out = []
    for command in (["inspect"], ["bench", "--runs", "3", "--warmup", "1"]):
        proc = run([sys.executable, "-m", "edgepilot", *command, str(target)], timeout)
        verdict = classify(proc)
        out.append({"format": fmt, "i": i, "mutation": kind, "command": command[0], "verdict": verdict,
                    "exit": None if proc is None else proc.returncode,
                    "stderr_tail": "" if proc is None else proc.stderr.strip().splitlines()[-1:]})
        if verdict not in ("ok", "one-line error"):
            shutil.copytree(folder, keep / folder.name, dirs_exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, help="mutants per format (default: 300 ONNX/TFLite, 50 others)")
    ap.add_argument("--formats", default=",".join(DEFAULT_COUNTS))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    formats = args.formats.split(",")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seed = seeds(work / "seeds")
        jobs = [(f, seed[f], i) for f in formats for i in range(args.count or DEFAULT_COUNTS[f])]
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = [r for rs in pool.map(lambda j: fuzz_one(*j, work, args.timeout, args.out / "fuzz-failures"), jobs)
                    for r in rs]
    tally = Counter((r["format"], r["command"], r["verdict"]) for r in rows)
    bad = [r for r in rows if r["verdict"] not in ("ok", "one-line error")]
    result = {"runs": len(rows), "seconds": round(time.perf_counter() - t0, 1),
              "counts": {f: args.count or DEFAULT_COUNTS[f] for f in formats},
              "tally": [{"format": f, "command": c, "verdict": v, "n": n} for (f, c, v), n in sorted(tally.items())],
              "failures": bad}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# bench/fuzz.py — {len(rows)} runs in {result['seconds']} s; mutants per format: "
             + ", ".join(f"{f} {n}" for f, n in result["counts"].items()), "",
             "| format | command | verdict | runs |", "|---|---|---|---:|"]
    lines += [f"| {t['format']} | {t['command']} | {t['verdict']} | {t['n']} |" for t in result["tally"]]
    lines += ["", f"Crashes by signal, tracebacks, hangs and unclear failures: {len(bad)}."]
    lines += [f"- {r['format']} #{r['i']} ({r['mutation']}), {r['command']}: {r['verdict']} — {r['stderr_tail']}"
              for r in bad[:30]]
    (args.out / "fuzz.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
