"""A bounded run of bench/fuzz.py: mutated model files through `inspect` and `bench`, each in its own process —
no death by signal, no traceback, no hang; every failure is one line. The full campaign is `python bench/fuzz.py`."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgepilot.assets import asset
from edgepilot.errors import UnavailableError

pytest.importorskip("torch")


@pytest.mark.slow
def test_mutated_models_fail_in_one_line(tmp_path):
    try:
        asset("blazeface-short-range", download=False)
    except UnavailableError as e:
        pytest.skip(str(e))
    spec = importlib.util.spec_from_file_location("fuzz", Path(__file__).parents[1] / "bench" / "fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    result = fuzz.main(["--count", "4", "--formats", "onnx,tflite,ncnn", "--timeout", "120", "--out", str(tmp_path)])
    assert result["runs"] == 24
    assert result["failures"] == [], result["failures"]
