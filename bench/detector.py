"""A real YOLOv8n detector through `edgepilot optimize`: NudeNet's 320n.onnx (from the nudenet==3.4.2 wheel) on
the scikit-image photos, letterboxed to 320×320 as NudeNet does. Writes bench/results/detector.{json,md}.

The data is a few photos (6, each whole and as 4 seeded crops, each also mirrored: 60 inputs), so the detection
agreement rests on the dozen or so boxes the fp32 model finds in them (mostly faces); the numbers say how far a
variant's boxes follow fp32's on these inputs, not the detector's accuracy.

    python bench/detector.py [--out workspace/detector] [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from edgepilot.assets import asset

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick")
SIZE = 320


def letterbox(img: np.ndarray) -> np.ndarray:
    """NudeNet's preprocessing: pad right/bottom to a square, resize to 320, RGB in 0..1, CHW."""
    side = max(img.shape[:2])
    square = np.zeros((side, side, 3), np.uint8)
    square[:img.shape[0], :img.shape[1]] = img
    return cv2.resize(square, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32).transpose(2, 0, 1) / 255


def photos() -> np.ndarray:
    rng = np.random.default_rng(0)
    out = []
    for name in PHOTOS:
        img = cv2.cvtColor(cv2.imread(str(asset(f"photo-{name}"))), cv2.COLOR_BGR2RGB)
        views = [img]
        h, w = img.shape[:2]
        for _ in range(4):
            s = rng.uniform(0.35, 0.8)
            ch, cw = int(h * s), int(w * s)
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            views.append(img[y:y + ch, x:x + cw])
        for v in views:
            out += [letterbox(v), letterbox(np.ascontiguousarray(v[:, ::-1]))]
    return np.stack(out)


def reference_boxes(model: Path, x: np.ndarray) -> int:
    """How many boxes fp32 onnxruntime finds in the inputs, decoded as optimize decodes them."""
    import onnxruntime as ort

    from edgepilot.evaluate.metrics.detection import decode
    from edgepilot.model import TensorSpec
    from edgepilot.runtime.decoders import PostprocessConfig

    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = np.concatenate([s.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
    boxes = decode(PostprocessConfig(type="yolov8"), [TensorSpec("output0", "float32", (1, *out.shape[1:]))],
                   (SIZE, SIZE), {"output0": out})
    return sum(len(b.scores) for b in boxes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("workspace/detector"))
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--formats", default=None, help="families to build (default: all)")
    ap.add_argument("--reuse", action="store_true", help="tabulate OUT/optimize/report.json again, run nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "photos.npz"
    if not args.reuse:
        np.savez(data, x=photos())
    model = asset("nudenet-320n")
    cmd = ["edgepilot", "optimize", str(model), "--data", str(data), "--out", str(args.out / "optimize"),
           "--seconds", str(args.seconds), *(["--formats", args.formats] if args.formats else [])]
    if not args.reuse:
        subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", *cmd[1:]], check=True)
    report = json.loads((args.out / "optimize" / "report.json").read_text())
    rows = []
    for v in report["variants"]:
        a, lat = v.get("agreement") or {}, v.get("latency") or {}
        rows.append({"variant": v["variant"], "engine": v.get("engine"), "precision": v.get("precision"),
                     "p50_ms": lat.get("p50_ms"), "size_kib": v["size_bytes"] / 1024,
                     "map50": a.get("map50"), "f1": a.get("f1"), "flags": v.get("flags", []),
                     "runtime_precision": v.get("runtime_precision"), "threads": v.get("threads"),
                     "runs": lat.get("runs"), "error": v.get("error")})
    lineage = json.loads((args.out / "optimize" / "lineage.json").read_text())["variants"]
    result = {"model": "NudeNet 320n (YOLOv8n, nudenet==3.4.2)", "inputs": len(np.load(data)["x"]),
              "reference_boxes": reference_boxes(model, np.load(data)["x"]), "command": shlex.join(cmd),
              "bench_command": shlex.join(["python", "bench/detector.py", *sys.argv[1:]]),
              "host": report.get("host"), "cpu": report.get("cpu"), "python": platform.python_version(),
              "variants": rows, "not_built": {v["variant"]: f"{v['status']}: {v['reason']}" for v in lineage
                                             if v["status"] != "ok"}}
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "detector.json").write_text(json.dumps(result, indent=2, default=str))

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    lines = [f"# {result['model']} through edgepilot optimize", "",
             f"{result['inputs']} inputs from 6 photos, {result['reference_boxes']} boxes found by fp32; agreement is "
             "with onnx-fp32's detections (yolov8 decoder, score 0.5, matched at IoU 0.5).", "",
             f"`{result['command']}`", "",
             f"CPU: {result['cpu']}; batch 1 at 1×3×320×320, {rows[0]['threads']} threads.", "",
             "| variant | engine | precision (runtime) | p50 ms | runs | size KiB | mAP@0.5 vs fp32 | F1 vs fp32 |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['engine']} | {r['precision']} ({r['runtime_precision']}) | "
              f"{f(r['p50_ms'], '.1f')} | {r['runs']} | {r['size_kib']:.0f} | {f(r['map50'], '.3f')} | "
              f"{f(r['f1'], '.3f')} |" for r in rows]
    lines += ["", *(f"- {k}: {v}" for k, v in result["not_built"].items())]
    (results / "detector.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
