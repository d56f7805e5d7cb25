"""Hostile YAML config files: every one ends in one line naming the file and the line, never a traceback."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    threads: int = 1


@pytest.mark.parametrize("content,message", [
    ("model: " + "[" * 10_000 + "]" * 10_000, ":1: not valid YAML (exceeded maximum nesting depth)"),
    ("".join(" " * i + "k:\n" for i in range(100)), ":65: nested deeper than 64 levels"),
    (b"\xff\xfem\x00o\x00d\x00", ":1: not UTF-8 text (it starts with a UTF-16 byte-order mark)"),
    (b"model: a\nthreads: \xc3\x28\n", ":2: not UTF-8 text"),
    ("model: m\nthreads: " + "9" * 5000 + "\n", ":2: not valid YAML (an integer of 5000 characters"),
    ("model: m\nthreads: 2024-99-99\n", ":2: not valid YAML (bad value '2024-99-99'"),
    ("model: " + "x" * (2 << 20), ": larger than 1 MiB"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
     + "model: m\n", "once its aliases are expanded"),
    ("model: &a [*a]\n", "nested deeper than 64 levels"),
])
def test_hostile_yaml_is_one_line_with_file_and_line(tmp_path, content, message):
    from edgepilot.config import load_yaml
    from edgepilot.errors import ConfigError

    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as e:
        load_yaml(path, _Settings)
    assert str(e.value).startswith(str(path)) and message in str(e.value) and "\n" not in str(e.value)


def test_yaml_is_parsed_once_with_the_c_loader(tmp_path, monkeypatch):
    import yaml

    from edgepilot import config

    if not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml")
    assert issubclass(config._Loader, yaml.CSafeLoader)
    calls = []
    monkeypatch.setattr(config._Loader, "get_single_node",
                        lambda self: calls.append(1) or yaml.CSafeLoader.get_single_node(self))
    path = tmp_path / "config.yaml"
    path.write_text("model: " + "x" * 900_000 + "\nthreads: 3\n")
    assert config.load_yaml(path, _Settings).threads == 3 and calls == [1]


def test_yaml_12_booleans_only(tmp_path):
    """`on: alerts` (the snapshots sink's key) stays a key named "on"; true/false are still booleans."""
    from edgepilot.config import load_yaml

    class Doc(BaseModel):
        model_config = ConfigDict(extra="forbid")
        on: str
        flag: bool

    path = tmp_path / "c.yaml"
    path.write_text("on: alerts\nflag: TRUE\n")
    assert load_yaml(path, Doc).on == "alerts" and load_yaml(path, Doc).flag is True
    path.write_text("on: off\nflag: false\n")
    assert load_yaml(path, Doc).on == "off" and load_yaml(path, Doc).flag is False
