"""Device monitoring: collectors read the machine, a SQLite store keeps history, an advisor and alerts act on it."""
from __future__ import annotations

from edgepilot.monitor.readings import Collector, Reading, Sample, SourceStatus

__all__ = ["Collector", "Reading", "Sample", "SourceStatus"]
