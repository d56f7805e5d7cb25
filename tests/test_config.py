"""YAML config loading: errors name the file, the line and the field."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from edgepilot.config import load_yaml
from edgepilot.errors import ConfigError


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float


class Conf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    rules: list[Inner] = []


def test_valid(tmp_path):
    (tmp_path / "c.yaml").write_text("name: a\nrules:\n  - threshold: 0.5\n")
    assert load_yaml(tmp_path / "c.yaml", Conf).rules[0].threshold == 0.5


@pytest.mark.parametrize("text,match", [
    ("name: a\nrules:\n  - threshold: 0.5\n  - threshold: high\n", r"c.yaml:4: rules.1.threshold: Input should be"),
    ("name: a\ncolour: red\n", r"c.yaml:2: colour: Extra inputs are not permitted"),
    ("rules: []\n", r"c.yaml:1: name: Field required"),
    ("name: [unclosed\n", r"c.yaml:2: not valid YAML"),
    ("- just\n- a list\n", r"c.yaml: expected a mapping"),
])
def test_errors_name_file_line_and_field(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_yaml(tmp_path / "c.yaml", Conf)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        load_yaml(tmp_path / "none.yaml", Conf)
