"""Concrete input shapes: parse `--shape name=dims`, check them against a model's inputs, take one from data."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from edgepilot.errors import ConfigError
from edgepilot.model import Model, TensorSpec

Shapes = dict[str, tuple[int, ...]]


def parse_shapes(items: Iterable[str]) -> Shapes:
    """`name=1x3x224x224` items (repeated, or comma-separated in one item) to a dict of shapes."""
    shapes: Shapes = {}
    for item in (p.strip() for it in items for p in it.split(",") if p.strip()):
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 1 for d in shape):
                raise ValueError
        except ValueError:
            raise ConfigError(f"bad --shape {item!r}", hint="write it as NAME=1x3x224x224, every size at least 1") \
                from None
        if name.strip() in shapes:
            raise ConfigError(f"--shape gives input {name.strip()!r} twice")
        shapes[name.strip()] = shape
    return shapes


def dims(shape: Iterable[int]) -> str:
    return "x".join(map(str, shape))


def check_shapes(specs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every named input exists, with the model's rank and its fixed sizes."""
    by_name = {s.name: s for s in specs}
    for name, shape in shapes.items():
        spec = by_name.get(name)
        if spec is None:
            raise ConfigError(f"--shape names input {name!r}, which the model does not have",
                              hint=f"its inputs: {', '.join(by_name) or 'none'}")
        if spec.shape is None:
            continue
        if len(shape) != len(spec.shape):
            raise ConfigError(f"--shape {name}={dims(shape)} has {len(shape)} dims; input {name!r} has "
                              f"{len(spec.shape)} {spec.shape_str()}")
        for i, (fixed, given) in enumerate(zip(spec.shape, shape)):
            if isinstance(fixed, int) and fixed >= 0 and fixed != given:
                raise ConfigError(f"--shape {name}={dims(shape)}: dimension {i} of input {name!r} is fixed at "
                                  f"{fixed} {spec.shape_str()}")


def resolve_shapes(specs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]], batch: int | None = None) -> Shapes:
    """A concrete shape for every input: the given one, else the model's with `batch` (default 1) in front.

    A batch the model cannot take (its leading size is fixed) and a `--shape` whose batch differs
    from `batch` are errors: silently running another batch would misstate the throughput.
    """
    check_shapes(specs, shapes)
    out: Shapes = {}
    for spec in specs:
        if spec.name in shapes:
            shape = tuple(shapes[spec.name])
            if batch is not None and shape and shape[0] != batch:
                raise ConfigError(f"--shape {spec.name}={dims(shape)} has batch {shape[0]} but --batch is {batch}",
                                  hint="give the batch in one of them, or the same in both")
        else:
            lead = spec.shape[0] if spec.shape else None
            if batch is not None and isinstance(lead, int) and lead >= 0 and lead != batch:
                raise ConfigError(f"input {spec.name!r} {spec.shape_str()} has a fixed batch of {lead}: "
                                  f"--batch {batch} cannot apply",
                                  hint="drop --batch, or export the model with a dynamic batch dimension")
            shape = spec.concrete_shape(batch or 1)
        out[spec.name] = shape
    return out


def shapes_for(specs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]]) -> Shapes:
    """Shapes given for one model, applied to a variant of it: by input name, else by position."""
    if all(name in {s.name for s in specs} for name in shapes):
        return {s.name: tuple(shapes[s.name]) for s in specs if s.name in shapes}
    return {s.name: tuple(shape) for s, shape in zip(specs, shapes.values())}


def with_shapes(model: Model, shapes: Mapping[str, tuple[int, ...]]) -> Model:
    """The model with these inputs' dynamic sizes made concrete (checked first)."""
    check_shapes(model.inputs, shapes)
    inputs = [replace(s, shape=tuple(shapes[s.name])) if s.name in shapes else s for s in model.inputs]
    return replace(model, inputs=inputs)


def data_shape(spec: TensorSpec, ds) -> tuple[int, ...]:
    """The dataset's sample shape fitted to `spec`, with batch 1: what `optimize` measures at by default."""
    from edgepilot.evaluate.datasets import fit_to_input

    return (1, *fit_to_input(ds.subset(1), spec).shape[1:])
