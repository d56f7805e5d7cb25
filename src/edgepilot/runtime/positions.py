"""Where each resumable file source got to: the position of its last item through the sinks, kept across restarts."""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Positions:
    """One small JSON file per pipeline: {source id: the position of its last delivered item}.

    A position is written after the sinks took the item, so a restart resumes after what was delivered: items
    in flight at a crash are read again, and the deterministic event ids let subscribers drop the repeats."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._positions: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._positions = {}
        except (OSError, ValueError) as e:  # a torn or foreign file must not stop the pipeline: start over
            log.warning("positions %s unreadable (%s): resumable sources start from the beginning", path, e)
            self._positions = {}

    def get(self, source_id: str) -> dict[str, Any] | None:
        return self._positions.get(source_id)

    def record(self, source_id: str, position: dict[str, Any]) -> None:
        """Atomically (write, fsync, rename), so a kill leaves the previous position or this one."""
        with self._lock:
            self._positions[source_id] = position
            tmp = self.path.with_name(self.path.name + ".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self._positions, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
