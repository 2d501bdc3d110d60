"""In-process counters for the worker (exposed over HTTP by projector.web)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Metrics:
    events_applied: Counter = field(default_factory=Counter)  # by table
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)  # by reason
    records_seen: int = 0
    batches: int = 0
