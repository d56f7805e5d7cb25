"""The stdout sink: events (or every result) as JSON lines on standard output."""
from __future__ import annotations

import sys
from typing import Literal

from pydantic import Field

from edgepilot.runtime.item import Item
from edgepilot.runtime.sinks.base import Sink, SinkConfigBase, What, wanted


class StdoutSinkConfig(SinkConfigBase):
    type: Literal["stdout"]
    what: What = Field("events", description="results: every item; events: only rule events; all: both")


class StdoutSink(Sink):
    name = "stdout"

    def __init__(self, cfg: StdoutSinkConfig) -> None:
        self.cfg = cfg

    def write(self, item: Item) -> None:
        if self.cfg.what == "events":
            for e in item.events:
                sys.stdout.write(e.to_json() + "\n")
        elif wanted(item, self.cfg.what):
            sys.stdout.write(item.to_json() + "\n")
        sys.stdout.flush()
