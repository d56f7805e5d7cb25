"""What every sink shares: the Sink base class, the config base class and the results/events choice."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from edgepilot.runtime.item import Item

What = Literal["results", "events", "all"]


class SinkConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


def wanted(item: Item, what: str) -> bool:
    return what != "events" or bool(item.events)


class Sink(ABC):
    """Consumes items in order. A `write` that raises is logged and counted by the pipeline, which goes on."""

    name: ClassVar[str]  # the config's `type`, and the name its errors are counted under

    @classmethod
    def open(cls, cfg: Any, *, pipeline: str, workdir: Path, fps_of: Callable[[str], float | None]) -> Sink:
        """The sink for `cfg` in a pipeline named `pipeline`, writing its state under `workdir`; `fps_of` gives a
        source's frame rate (None when unknown). Most sinks need only their config."""
        return cls(cfg)  # type: ignore[call-arg]

    @abstractmethod
    def write(self, item: Item) -> None: ...

    def close(self) -> None:
        return None
