"""The device install's footprint: a fresh venv with `edgepilot[onnx,tflite,serve,deploy]` (what the install script
and the Dockerfile put on a device: no TensorFlow, no PyTorch), measured on disk, at start and idle.

Targets (issue 13): environment ≤ 300 MB, idle RSS ≤ 150 MB, start ≤ 2 s. Start is the wall time from launching
`edgepilot serve` to /v2/health/ready answering 200 on a tiny ONNX model, and `edgepilot --help`'s (the import
cost every command pays). Idle RSS is the server's, and a sensor pipeline's waiting for lines, after 5 s. Camera
and video pipelines add the vision extra (OpenCV), measured separately as its size on disk.
Writes bench/results/footprint.{json,md}. Needs network access to the package index (or a local mirror).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from brokers import free_port  # noqa: E402
from servers import linear_onnx  # noqa: E402

EXTRAS = "onnx,tflite,serve,deploy"
TARGETS = {"environment_mb": 300, "idle_rss_mb": 150, "start_s": 2.0}


def compile_site(py: Path, venv: Path) -> None:
    subprocess.run([str(py), "-m", "compileall", "-q", "-j", "0", "-x", "/tests?/", str(venv / "lib")],
                   stdout=subprocess.DEVNULL)


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def runtime_mb(venv: Path, site: Path) -> float:
    """The venv without the installer tooling (pip, setuptools): the device runs without them."""
    return du_mb(venv) - sum(du_mb(site / tool) for tool in ("pip", "setuptools") if (site / tool).exists())


def packages_by_size(site: Path, top: int = 12) -> list[tuple[str, float]]:
    sizes = {}
    for p in site.iterdir():
        if p.name.endswith((".dist-info", ".pth")) or p.name in ("__pycache__", "pip", "setuptools"):
            continue
        sizes[p.name] = du_mb(p) if p.is_dir() else p.stat().st_size / 1e6
    return sorted(((k, round(v, 1)) for k, v in sizes.items()), key=lambda kv: -kv[1])[:top]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise SystemExit("the server did not become ready")


def idle_rss_mb(proc: subprocess.Popen, settle_s: float = 5.0) -> float:
    time.sleep(settle_s)
    p = psutil.Process(proc.pid)
    return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 1e6


def main() -> None:
    out: dict = {"extras": EXTRAS, "python": sys.version.split()[0], "targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        venv = tmp / "device"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py, cli = venv / "bin" / "python", venv / "bin" / "edgepilot"
        t0 = time.perf_counter()
        # as install.sh does: bytecode compiled for what runs, not for the packages' test suites (the service user
        # cannot write it; with PYTHONDONTWRITEBYTECODE nothing would, and every start would compile every module)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", f"{ROOT}[{EXTRAS}]"], check=True)
        compile_site(py, venv)
        out["install_s"] = round(time.perf_counter() - t0, 1)
        site = next((venv / "lib").glob("python3*/site-packages"))
        out["environment_mb"] = round(runtime_mb(venv, site), 1)
        out["largest_packages_mb"] = packages_by_size(site)
        out["has_tensorflow_or_torch"] = any((site / n).exists() for n in ("tensorflow", "torch"))

        helps = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([str(cli), "--help"], check=True, capture_output=True)
            helps.append(time.perf_counter() - t0)
        out["cli_help_s"] = round(statistics.median(helps), 3)

        linear_onnx(tmp / "models" / "linear" / "1" / "model.onnx")
        starts, rss = [], []
        for _ in range(3):
            port = free_port()
            proc = subprocess.Popen([str(cli), "serve", "--models", str(tmp / "models"), "--port", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                starts.append(wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc))
                rss.append(idle_rss_mb(proc))
            finally:
                proc.terminate()
                proc.wait(30)
        out["serve_start_s"] = round(statistics.median(starts), 3)
        out["serve_idle_rss_mb"] = round(statistics.median(rss), 1)

        (tmp / "sensor.csv").write_text("a,b,c,d\n")  # a sensor pipeline: image sources need the vision extra
        (tmp / "pipeline.yaml").write_text(json.dumps({
            "name": "idle", "model": {"path": str(tmp / "models" / "linear" / "1" / "model.onnx")},
            "sources": [{"type": "sensor", "path": str(tmp / "sensor.csv"), "follow": True}],
            "preprocess": {"fields": ["a", "b", "c", "d"]}, "postprocess": {"type": "raw"}, "sinks": []}))
        proc = subprocess.Popen([str(cli), "run", str(tmp / "pipeline.yaml")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            out["run_idle_rss_mb"] = round(idle_rss_mb(proc, 8.0), 1)
            if proc.poll() is not None:
                raise SystemExit(f"the idle pipeline exited: {proc.stderr.read()}")
        finally:
            proc.terminate()
            proc.wait(30)

        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", f"{ROOT}[{EXTRAS},vision]"],
                       check=True)
        compile_site(py, venv)
        out["vision_extra_mb"] = round(runtime_mb(venv, site) - out["environment_mb"], 1)

    out["met"] = {"environment_mb": out["environment_mb"] <= TARGETS["environment_mb"],
                  "idle_rss_mb": max(out["serve_idle_rss_mb"], out["run_idle_rss_mb"]) <= TARGETS["idle_rss_mb"],
                  "start_s": out["serve_start_s"] <= TARGETS["start_s"]}
    results = ROOT / "bench" / "results"
    (results / "footprint.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# bench/footprint.py — the device install `edgepilot[{EXTRAS}]`, Python {out['python']}", "",
             "| measure | value | target | met |", "|---|---:|---:|---|",
             f"| environment on disk (venv without pip/setuptools) | {out['environment_mb']} MB | ≤ 300 MB | "
             f"{'yes' if out['met']['environment_mb'] else 'no'} |",
             f"| `edgepilot serve` start to ready | {out['serve_start_s']} s | ≤ 2 s | "
             f"{'yes' if out['met']['start_s'] else 'no'} |",
             f"| `edgepilot serve` idle RSS | {out['serve_idle_rss_mb']} MB | ≤ 150 MB | "
             f"{'yes' if out['serve_idle_rss_mb'] <= 150 else 'no'} |",
             f"| `edgepilot run` idle RSS (a sensor pipeline, waiting) | {out['run_idle_rss_mb']} MB | ≤ 150 MB | "
             f"{'yes' if out['run_idle_rss_mb'] <= 150 else 'no'} |",
             f"| `edgepilot --help` | {out['cli_help_s']} s | | |",
             f"| + the vision extra (OpenCV, for camera/video/image sources) | +{out['vision_extra_mb']} MB | | |",
             "",
             f"TensorFlow or PyTorch installed: {'yes' if out['has_tensorflow_or_torch'] else 'no'}. "
             "Largest packages (MB): " + ", ".join(f"{k} {v}" for k, v in out["largest_packages_mb"]) + "."]
    (results / "footprint.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    main()
