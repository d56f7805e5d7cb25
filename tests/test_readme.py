"""The README's YAML examples load as written: what a user copies must work."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgepilot.config import load_yaml
from edgepilot.runtime.pipeline import PipelineConfig
from edgepilot.serve.repository import ServedModelConfig

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)


def _schema(text: str):
    if "sources:" in text:
        return PipelineConfig
    if "max_batch:" in text or "instances:" in text:
        return ServedModelConfig
    raise AssertionError(f"a README YAML example that no test knows how to load:\n{text[:200]}")


def test_the_readme_has_yaml_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("text", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_yaml_loads(tmp_path, text):
    path = tmp_path / "example.yaml"
    path.write_text(text)
    load_yaml(path, _schema(text))
