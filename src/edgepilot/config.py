"""Load YAML config files into pydantic models; errors name the file, the line and the field."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgepilot.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
MAX_BYTES = 1 << 20  # config files are small: a larger one is a mistake or an attack
MAX_DEPTH = 64  # nesting levels; the constructor recurses per level
MAX_NODES = 100_000  # values after aliases are expanded: bounds "billion laughs" files
MAX_DIGITS = 100  # digits of an integer; int() of thousands of digits is slow and refused by Python


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml where installed: fast, and bounded
    """The safe loader, with integers of bounded length and every value error tied to its line."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(None, None, f"bad value {str(node.value)[:40]!r} ({e})",
                                                    node.start_mark) from None

    def construct_yaml_int(self, node):
        if len(str(node.value)) > MAX_DIGITS:
            raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(node.value)} characters "
                                                    f"(at most {MAX_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
# YAML 1.1 reads on/off/yes/no as booleans, so `on: alerts` would become `True: alerts`. Configs follow
# YAML 1.2 here: only true and false are booleans.
_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {first: [r for r in resolvers if r[0] != _BOOL]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(path: str | Path, model: type[M]) -> M:
    path = Path(path)
    node, data = _parse(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        line = _line_of(node, err["loc"])
        field = ".".join(loc) or "(top level)"
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {field}: {err['msg']}") from e


def _parse(path: Path):
    """The YAML node tree (for line numbers) and the data built from it, parsed once, within bounds."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from e
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES >> 20} MiB, too large for a config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bom = " (it starts with a UTF-16 byte-order mark)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{path}:{raw[:e.start].count(10) + 1}: not UTF-8 text{bom}",
                          hint="save the file as UTF-8") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_bounds(path, node)
        return node, loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except RecursionError:  # the pure-Python composer, where libyaml is missing
        raise ConfigError(f"{path}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()


def _check_bounds(path: Path, root) -> None:
    """Refuse trees deeper than MAX_DEPTH or with more than MAX_NODES values once aliases are expanded."""
    sizes: dict[int, int] = {}  # expanded size per node id: an alias repeats a node, it is counted each time
    stack = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise ConfigError(f"{path}:{node.start_mark.line + 1}: more than {MAX_NODES} values "
                                  "once its aliases are expanded")
        elif id(node) not in sizes:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def _line_of(node, loc) -> int | None:
    """The 1-based line of the deepest YAML node on the error's path."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    if line is None and node is not None:
        line = node.start_mark.line + 1
    return line
