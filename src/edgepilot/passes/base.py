"""The Pass contract: one conversion or optimisation step that turns a Model into another."""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgepilot.errors import ConfigError
from edgepilot.model import Format, Model


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class PassContext:
    """What a pass may need beyond the model: where to write, and representative data."""

    workdir: Path
    calibration: dict[str, np.ndarray] | None = None  # representative inputs by input name, batch first
    labels: np.ndarray | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None  # concrete input shapes by name (pnnx needs one)
    notes: dict[str, Any] = field(default_factory=dict)  # what the pass wants recorded in the lineage
    trust_model_code: bool = False  # the user lets passes run code from the model file (--trust-model-code)
    cache_dir: Path | None = None  # shared by the passes of one plan (a converter that makes several variants at once)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)


class Pass(ABC):
    name: ClassVar[str]
    consumes: ClassVar[frozenset[Format]]
    produces: ClassVar[Format]
    Options: ClassVar[type[BaseModel]] = NoOptions
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules the pass needs
    extra: ClassVar[str] = ""  # the edgepilot extra that installs them

    def why_not(self, model: Model, ctx: PassContext) -> list[str]:
        """Reasons this pass cannot run on `model` here; an empty list means it can."""
        reasons = []
        if model.format not in self.consumes:
            reasons.append(f"{self.name} takes {', '.join(sorted(f.value for f in self.consumes))}, "
                           f"not {model.format.value}")
        return reasons + self.missing()

    @classmethod
    def missing(cls) -> list[str]:
        """What this pass needs that is not installed here, in words (`edgepilot doctor` lists it)."""
        return [f"'{module}' is not installed (pip install 'edgepilot[{cls.extra}]')"
                for module in cls.requires if importlib.util.find_spec(module) is None]

    def options(self, **values: Any) -> BaseModel:
        try:
            return self.Options(**values)
        except Exception as e:
            raise ConfigError(f"bad options for pass {self.name}: {e}") from e

    @abstractmethod
    def run(self, model: Model, options: BaseModel, ctx: PassContext) -> Model:
        """Write the new model under ctx.workdir and return it, loaded."""
