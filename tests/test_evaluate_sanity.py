"""Every variant proven sane after its pass; int8 that is not int8 is flagged; gates and select on the task metric;
the report's tables and charts."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import sample
from builders.onnx import export_onnx
from edgepilot.errors import ModelError
from edgepilot.evaluate.datasets import Dataset
from edgepilot.evaluate.latency import LatencyStats
from edgepilot.evaluate.report import (
    Report,
    VariantResult,
    build_report,
    chart_series,
    evaluate_variants,
    md_to_html,
    write_report,
)
from edgepilot.evaluate.sanity import SanityCheck, int8_ops
from edgepilot.evaluate.tasks import Agreement
from edgepilot.model import Model
from edgepilot.targets.profiles import get_board
from edgepilot.targets.select import Gates, accuracy_reasons, select


def _edit(src, dest, tail) -> Model:
    """A copy of the ONNX model at `src` whose output goes through `tail(graph, name)` (which returns a new name)."""
    m = onnx.load(str(src))
    out = m.graph.output[0]
    for node in m.graph.node:
        node.output[:] = ["pre" if o == out.name else o for o in node.output]
    new = tail(m.graph, "pre")
    m.graph.node.append(helper.make_node("Identity", [new], [out.name]))
    onnx.save(m, str(dest))
    return Model.load(dest)


def _zeroed(graph, name):
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    graph.node.append(helper.make_node("Mul", [name, "zero"], ["zeroed"]))
    return "zeroed"


def _padded(graph, name):  # 1 MiB of weights that change nothing: larger than the float model
    graph.initializer.append(numpy_helper.from_array(np.zeros(2**18, np.float32), "padding"))
    graph.node.append(helper.make_node("ReduceSum", ["padding"], ["nothing"], keepdims=0))
    graph.node.append(helper.make_node("Add", [name, "nothing"], ["padded"]))
    return "padded"


def _cast_mismatch(graph, name):  # what a broken fp16 conversion leaves: float16 added to float32
    graph.initializer.append(numpy_helper.from_array(np.ones((), np.float32), "one"))
    graph.node.append(helper.make_node("Cast", [name], ["half"], to=TensorProto.FLOAT16))
    graph.node.append(helper.make_node("Add", ["half", "one"], ["mixed"]))
    return "mixed"


def _first_five(graph, name):
    for n, v in (("starts", [0]), ("ends", [5]), ("axes", [1])):
        graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), n))
    graph.node.append(helper.make_node("Slice", [name, "starts", "ends", "axes"], ["five"]))
    return "five"


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return export_onnx("cnn", tmp_path_factory.mktemp("cnn") / "cnn.onnx")


def test_sanity_fails_unloadable_wrong_shaped_and_constant_variants(cnn, tmp_path):
    check = SanityCheck(Dataset("s", sample("cnn", batch=4)))
    check.check("onnx-fp32", Model.load(cnn))  # the float reference
    with pytest.raises(ModelError, match="onnx-fp16 does not run on onnxruntime"):
        check.check("onnx-fp16", _edit(cnn, tmp_path / "fp16.onnx", _cast_mismatch))
    with pytest.raises(ModelError, match=r"output 0 has shape \[4, 5\] where the reference has \[4, 10\]"):
        check.check("openvino-fp16", _edit(cnn, tmp_path / "five.onnx", _first_five))
    with pytest.raises(ModelError, match="output 0 is constant"):
        check.check("onnx-int8-static", _edit(cnn, tmp_path / "zero.onnx", _zeroed))
    assert check.problem([np.full((4, 10), np.nan)]) == "output 0 holds NaN or infinite values"
    assert check.problem([np.tile(np.arange(10.0), (4, 1))]) == "output 0 is the same for every input"


def test_a_broken_fp16_variant_is_recorded_failed(cnn, tmp_path, monkeypatch):
    from edgepilot import optimize
    from edgepilot.passes import all_passes
    from edgepilot.passes.onnx_fp16 import OnnxFp16

    class BrokenFp16(OnnxFp16):  # a converter that writes a model onnxruntime cannot load
        def run(self, model, options, ctx):
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            return _edit(model.path, ctx.workdir / "model.onnx", _cast_mismatch)

    monkeypatch.setattr(optimize, "all_passes", lambda: {**all_passes(), "onnx-fp16": BrokenFp16})
    model = Model.load(cnn)
    steps = [optimize.Step("onnx-fp32", "onnx-fold-constants", {}, "source"),
             optimize.Step("onnx-fp16", "onnx-fp16", {}, "onnx-fp32")]
    variants, records = optimize.run_plan(model, steps, tmp_path / "out", Dataset("d", sample("cnn", batch=4)))
    status = {r.variant: (r.status, r.reason) for r in records}
    assert status["onnx-fp32"] == ("ok", None)
    assert status["onnx-fp16"][0] == "failed" and "does not run on onnxruntime" in status["onnx-fp16"][1]
    assert "onnx-fp16" not in variants
    lineage = {v["variant"]: v for v in json.loads((tmp_path / "out" / "lineage.json").read_text())["variants"]}
    assert lineage["onnx-fp16"]["status"] == "failed"


def test_int8_ops_are_read_from_the_graph(cnn, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(cnn), str(tmp_path / "q.onnx"))
    assert int8_ops(Model.load(tmp_path / "q.onnx")) is True
    assert int8_ops(Model.load(cnn)) is False


def test_all_zero_variant_fails_the_gate_and_fake_int8_is_flagged(cnn, tmp_path):
    variants = {"onnx-fp32": Model.load(cnn), "onnx-fp16": _edit(cnn, tmp_path / "zero.onnx", _zeroed),
                "onnx-int8-static": _edit(cnn, tmp_path / "big.onnx", _padded)}
    ds = Dataset("unlabelled", sample("cnn", batch=16))
    results, ref = evaluate_variants(variants, ds, seconds=0.05)
    rows = {r.variant: r for r in results}
    assert ref.variant == "onnx-fp32" and ref.spec.task == "classification"
    zero = rows["onnx-fp16"]
    assert zero.agreement.value == 0.0 and zero.agreement.outputs[0].cosine == 0.0 and zero.accuracy_drop == 1.0
    assert zero.top1 is None  # no labels: no accuracy, only agreement
    report = build_report(variants["onnx-fp32"], ds, results, ref)
    assert report.task == "classification (inferred from the outputs)" and not report.labelled
    assert accuracy_reasons(zero, Gates(), report) == [
        "loses 1.0000 agreement (top-1 agreement) against the reference (gate 0.01)"]
    assert accuracy_reasons(zero, Gates(max_accuracy_drop=None, min_agreement=0.9), report)
    fake = rows["onnx-int8-static"]
    assert fake.agreement.value == 1.0 and fake.int8 is False
    assert "holds no int8 operation: it computes in float" in fake.flags
    assert any(f.startswith("not smaller than onnx-fp32") for f in fake.flags)
    sel = select(report, "host")
    assert "onnx-fp16" in {c.variant for c in sel.dropped}
    rpi = select(report, "rpi5")  # an estimate: the fake int8 gets no int8 speed-up
    est = next(c for c in rpi.ranked + rpi.dropped if c.variant == "onnx-int8-static")
    assert est.p50_ms == pytest.approx(fake.latency.p50_ms * report.host_gflops / get_board("rpi5").est_gflops)


def _lat(p50):
    return LatencyStats(runs=10, warmup=1, batch=1, concurrency=1, wall_s=1, p50_ms=p50, p90_ms=p50, p95_ms=p50,
                        p99_ms=p50, mean_ms=p50, std_ms=0, min_ms=p50, max_ms=p50, throughput_sps=1000 / p50)


def test_report_tables_and_charts_show_every_variant_with_the_metric(tmp_path):
    def agree(v):
        return Agreement(task="detection", metric="detection F1 at IoU 0.5", value=v, precision=v, recall=v, f1=v,
                         map50=v)

    report = Report(source="yolo.onnx", dataset="frames", samples=8, reference="onnx-fp32", host="h", cpu="c",
                    task="detection, yolov8 decoder (inferred from the outputs)",
                    task_metric="detection F1 at IoU 0.5", variants=[
                        VariantResult(variant="onnx-fp32", format="onnx", engine="onnxruntime", size_bytes=2048,
                                      agreement=agree(1.0), latency=_lat(2.0)),
                        VariantResult(variant="ncnn-fp16", format="ncnn", engine="ncnn", size_bytes=1024,
                                      agreement=agree(0.97)),  # no latency
                        VariantResult(variant="tensorrt-fp16", format="tensorrt", size_bytes=900,
                                      error="no engine here runs tensorrt")])
    charts = {title: names for title, _, names, _ in chart_series(report)}
    assert charts["Agreement with the reference onnx-fp32: detection F1 at IoU 0.5"] == ["onnx-fp32", "ncnn-fp16"]
    assert charts["p50 latency per variant (batch 1)"] == ["onnx-fp32"]
    assert charts["Size on disk"] == ["onnx-fp32", "ncnn-fp16", "tensorrt-fp16"]
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| precision | recall | F1 | mAP@0.5 |" in md and "| 0.9700 | 0.9700 | 0.9700 | 0.9700 |" in md
    assert "top-1" not in md and "agreement with the reference onnx-fp32" in md
    page = md_to_html(md)
    assert page.count("<table>") == 1 and "<td>---" not in page and page.count("<tr>") == 1 + 3
