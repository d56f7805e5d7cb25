"""Errors at the boundary: foreign exceptions become one edgepilot line (never an IndexError on an empty message),
the benchmark child reports what killed it, and feeds beyond the memory budget are refused before allocation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgepilot.errors import ModelError, first_line, translate


def test_a_foreign_exception_becomes_one_line_even_without_a_message():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("\n\n  first  \nsecond")) == "first"
    e = translate(RuntimeError(""), ModelError, "m.onnx: onnxruntime cannot load it", hint="export it again")
    assert isinstance(e, ModelError) and str(e) == ("m.onnx: onnxruntime cannot load it (RuntimeError) "
                                                    "(hint: export it again)")


def test_the_benchmark_child_reports_an_unexpected_exception_in_one_line(tmp_path, monkeypatch):
    from edgepilot.evaluate import benchmark

    def boom(cfg):
        raise KeyError("input\x00name")

    monkeypatch.setattr(benchmark, "run_in_process", boom)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    monkeypatch.setattr(benchmark.BenchConfig, "model_validate_json", classmethod(lambda cls, s: None))
    assert benchmark._main(str(tmp_path / "out.json")) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["kind"] == "RuntimeFailure" and result["error"].startswith("the benchmark failed: KeyError:")


def test_feeds_above_the_memory_budget_are_refused_before_allocation(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8192, 8192])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8192, 8192])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "big.onnx"))
    proc = subprocess.run([sys.executable, "-m", "edgepilot", "bench", str(tmp_path / "big.onnx")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EDGEPILOT_MAX_FEED_MB": "100"})
    assert proc.returncode == 2
    assert "need 768 MB, above the budget of 100 MB" in proc.stderr and "Traceback" not in proc.stderr
