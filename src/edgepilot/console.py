"""Rich consoles wide enough for edgepilot's tables, for the CLI and the demos alike."""
from __future__ import annotations

from typing import IO


def wide_console(min_width: int = 100, file: IO[str] | None = None):
    """A rich Console at least `min_width` wide (a pipe reports 80 columns, too narrow for the tables).

    file: where it writes, default stdout (a run log yields the terminal's own file while it holds stdout).
    """
    from rich.console import Console

    return Console(file=file, width=max(Console(file=file).width, min_width))
