"""The optimize flow: plan by source format, run with failures recorded, measure, report, lineage."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from builders import sample
from builders.onnx import export_onnx
from edgepilot.engines import open_session
from edgepilot.errors import EdgepilotError
from edgepilot.evaluate.datasets import Dataset
from edgepilot.model import Format, Model
from edgepilot.optimize import plan, run_plan
from edgepilot.passes.base import Pass


def cli(*args):
    return subprocess.run([sys.executable, "-c", "from edgepilot.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "150"})


def test_plan_follows_the_source_format(tmp_path):
    onnx = Model.load(export_onnx("cnn", tmp_path / "m.onnx"))
    steps = [s.variant for s in plan(onnx)]
    assert plan(onnx)[0].pass_name == "onnx-fold-constants" and steps[0] == "onnx-fp32"  # weights in initializers
    assert {"openvino-fp32", "mnn-fp32", "ncnn-fp32"} <= set(steps)
    by = {s.variant: s for s in plan(onnx)}
    assert by["tflite-int8"].pass_name == "onnx-to-tflite" and by["micro-int8"].source == "tflite-int8"
    openvino_only = {s.variant for s in plan(onnx, ["openvino"])}
    assert {"openvino-fp32", "openvino-fp16"} <= openvino_only  # built from the folded onnx-fp32
    assert all(v.startswith("openvino") for v in openvino_only - {"onnx-fp32"})
    with pytest.raises(EdgepilotError, match="unknown format 'coreml'"):
        plan(onnx, ["coreml"])


def test_keras_plan_builds_onnx_first(tmp_path):
    from builders import keras_model

    keras_model("mlp").save(tmp_path / "m.keras")
    steps = plan(Model.load(tmp_path / "m.keras"), ["mnn"])
    assert [(s.variant, s.source) for s in steps][:2] == [("onnx-fp32", "source"), ("mnn-fp32", "onnx-fp32")]


def test_a_failing_pass_is_recorded_and_the_rest_go_on(tmp_path):
    import torch

    class Flex(torch.nn.Module):  # a dynamic spatial size: ncnn's converter needs a fixed one
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)

    path = tmp_path / "flex.onnx"
    torch.onnx.export(Flex(), (torch.zeros(1, 3, 8, 8),), str(path), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch", 2: "h", 3: "w"}}, dynamo=False, opset_version=17)
    model = Model.load(path)
    variants, records = run_plan(model, plan(model, ["ncnn", "openvino"]), tmp_path / "out")
    status = {r.variant: r.status for r in records}
    assert status["ncnn-fp32"] == "failed" and status["openvino-fp32"] == "ok"
    failed = next(r for r in records if r.variant == "ncnn-fp32")
    assert "dynamic dimension" in failed.reason
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert {v["variant"] for v in lineage["variants"]} == set(status)
    assert "openvino-fp32" in variants and "ncnn-fp32" not in variants


@pytest.mark.slow
def test_optimize_command_on_a_pytorch_model(tmp_path):
    import torch

    from builders import torch_model, torch_reference

    program = torch.export.export(torch_model("cnn"), (torch.from_numpy(sample("cnn")),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    x = sample("cnn", batch=64)
    np.savez(tmp_path / "data.npz", x=x, y=torch_reference("cnn", x).argmax(1))  # labels = the model's own answers
    out = tmp_path / "out"
    proc = cli("optimize", str(tmp_path / "cnn.pt2"), "--data", str(tmp_path / "data.npz"),
               "--formats", "onnx,openvino,mnn", "--out", str(out), "--seconds", "0.2", "--trust-model-code")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    assert {"onnx-fp32", "openvino-fp32", "openvino-fp16", "mnn-fp32"} <= set(rows)
    assert report["reference"] == "onnx-fp32"
    for r in rows.values():
        assert r["error"] is None, r
        assert r["top1"] == pytest.approx(1.0, abs=0.02) and r["agreement"]["value"] >= 0.98
        assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] and r["peak_rss_mb"] > 0
    lineage = json.loads((out / "lineage.json").read_text())
    first = lineage["variants"][0]
    assert first["variant"] == "onnx-fp32" and first["pass_name"] == "torch-to-onnx" and first["tools"]["torch"]
    assert "| mnn-fp32 | mnn |" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    # task metric, top-1 against labels, latency, size, Pareto, weight error
    assert page.count("<img") == 6 and page.count("data:image/png;base64,") == 6 and "<table>" in page
    assert "Weight quantisation error by bit depth" in page


def test_bad_data_is_a_clear_error(tmp_path):
    model_path = export_onnx("cnn", tmp_path / "m.onnx")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3, 32, 32), np.float32))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 5, 5), np.float32), y=np.zeros(4))
    proc = cli("optimize", str(model_path), "--data", str(tmp_path / "empty.npz"), "--formats", "openvino")
    assert proc.returncode == 2 and "is empty" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("optimize", str(model_path), "--data", str(tmp_path / "wrong.npz"), "--formats", "openvino")
    assert proc.returncode == 2 and "samples of shape [5, 5] do not fit input 'input'" in proc.stderr
    proc = cli("optimize", str(tmp_path / "missing.onnx"), "--data", "digits")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_dataset_fingerprint_in_lineage(tmp_path):
    from builders import keras_model

    keras_model("mlp").save(tmp_path / "m.keras")
    model = Model.load(tmp_path / "m.keras")
    ds = Dataset("calib", np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32))
    steps = [s for s in plan(model, ["tflite"]) if s.variant in ("tflite-fp32", "tflite-int8")]
    _, records = run_plan(model, steps, tmp_path / "out", ds)
    by = {r.variant: r for r in records}
    assert by["tflite-int8"].calibration_sha256 == ds.fingerprint()
    assert by["tflite-fp32"].calibration_sha256 is None  # it used no calibration data


def test_recipe_file(tmp_path):
    model_path = export_onnx("mlp", tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=sample("mlp", batch=16))
    (tmp_path / "r.yaml").write_text(f"model: {model_path}\ndata: {tmp_path / 'd.npz'}\nformats: [openvino]\n"
                                     f"out: {tmp_path / 'out'}\nseconds: 0.1\n")
    proc = cli("optimize", "--recipe", str(tmp_path / "r.yaml"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["variants"]
    assert {r["variant"] for r in rows} >= {"onnx-fp32", "openvino-fp32", "openvino-fp16"}
    assert all(r["variant"].startswith(("onnx-fp32", "openvino")) for r in rows)
    (tmp_path / "bad.yaml").write_text(f"model: {model_path}\ndata: digits\nseconds: soon\n")
    proc = cli("optimize", "--recipe", str(tmp_path / "bad.yaml"))
    assert proc.returncode == 2 and "bad.yaml:3: seconds:" in proc.stderr


class _Sabotage(Pass):
    """A stand-in quantiser that is wrong by construction on any CPU: with `broken`, its outputs are negated
    (the arg-max becomes the arg-min); without, it is the source model."""

    name = "test-sabotage"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        broken: bool = True
        per_channel: bool = False

    def run(self, model, options, ctx):
        import onnx
        from onnx import helper

        m = onnx.load(str(model.path))
        if options.broken:
            out = m.graph.output[0].name
            for node in m.graph.node:
                node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
            m.graph.node.append(helper.make_node("Neg", [f"{out}_raw"], [out]))
        onnx.save(m, str(ctx.workdir / "model.onnx"))
        return Model.load(ctx.workdir / "model.onnx")


@pytest.mark.parametrize("retries,recovers", [([{"per_channel": True}, {"broken": False}], True),
                                              ([{"per_channel": True}], False)], ids=["recovers", "rejects"])
def test_accuracy_gate_retries_then_recovers_or_rejects(tmp_path, monkeypatch, retries, recovers):
    from edgepilot import catalog, optimize
    from edgepilot.passes import all_passes

    fold = next(s for s in catalog.CATALOGUE if s.pass_name == "onnx-fold-constants")  # the source as onnx-fp32
    monkeypatch.setattr(catalog, "CATALOGUE", (fold, catalog.VariantSpec(
        "onnx-int8-static", "onnx", catalog.INT8, "onnxruntime", "test-sabotage", "onnx-fp32")))
    monkeypatch.setitem(all_passes(), "test-sabotage", _Sabotage)
    monkeypatch.setitem(optimize.RETRIES, "test-sabotage", retries)
    source = Model.load(export_onnx("cnn", tmp_path / "cnn.onnx"))
    x = sample("cnn", batch=40)
    with open_session(source, "onnxruntime") as s:  # labels the reference gets right: its top-1 is 1.0
        y = s.run({"input": x})[source.outputs[0].name].argmax(1)
    report, _ = optimize.optimize_and_report(source, Dataset("d", x, y), tmp_path / "out", ["onnx"],
                                             seconds=0.1, max_accuracy_drop=0.01)
    rows = {r.variant: r for r in report.variants}
    assert rows["onnx-fp32"].top1 == 1.0
    r = rows["onnx-int8-static"]
    assert [t.rsplit(": top-1", 1)[0] for t in r.tries] == [str(t) for t in retries]
    if recovers:
        assert r.top1 == 1.0 and "recovered by retry 2 with {'broken': False}" in r.flags
    else:
        assert r.top1 < 0.5 and any("rejected by the accuracy gate" in f and "1 safer settings tried" in f
                                    for f in r.flags), r.flags
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("recovered by retry" in md) == recovers and ("rejected by the accuracy gate" in md) != recovers


def test_bf16_variant_is_planned_only_where_the_cpu_has_bf16(tmp_path):
    from edgepilot.host import has_capability

    onnx = Model.load(export_onnx("cnn", tmp_path / "m.onnx"))
    planned = {s.variant for s in plan(onnx, ["openvino"])}
    assert ("openvino-bf16" in planned) == has_capability("bf16")
    assert has_capability("bf16", {"avx2", "avx512f", "avx512_bf16"}) and has_capability("bf16", {"asimd", "bf16"})
    assert not has_capability("bf16", {"avx2", "avx512f", "avx512_vnni"})


def test_the_catalogue_names_every_variant_once_and_builds_from_earlier_rows():
    from edgepilot import catalog
    from edgepilot.passes import all_passes

    seen = {catalog.SOURCE}
    for spec in catalog.CATALOGUE:
        assert spec.source in seen, f"{spec.id} is built from {spec.source}, which no earlier row makes"
        assert spec.pass_name in all_passes() and spec.family in catalog.FAMILIES
        assert spec.precision in {catalog.FP32, catalog.FP16, catalog.BF16, *catalog.QUANTIZED}
        seen.add(spec.id)
    rows = {}
    for spec in catalog.CATALOGUE:  # rows that share an id differ only in how they are built
        rows.setdefault(spec.id, (spec.family, spec.precision, spec.engine))
        assert rows[spec.id] == (spec.family, spec.precision, spec.engine)
