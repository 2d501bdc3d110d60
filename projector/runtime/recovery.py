"""How far changelog recovery has got: per partition, records left, rate and ETA.

Faust restores each table partition from its changelog before the worker
serves it, and says little while it does. :class:`RecoveryProgress` samples
Faust's recovery offsets every couple of seconds. It logs each active
partition still restoring with its ETA, keeps the numbers for ``/status`` and
``/metrics``, and counts the records restored (the recovery rate).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 2.0
LOG_SECONDS = 10.0


@dataclass
class PartitionProgress:
    topic: str
    partition: int
    kind: str  # "active" (must finish before the worker is ready) or "standby"
    remaining: int
    rate: float  # records restored per second over the last sample
    eta_seconds: Optional[float]

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "kind": self.kind, "remaining": self.remaining,
                "rate": round(self.rate, 1),
                "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1)}


class RecoveryProgress:
    def __init__(self, recovery: Any) -> None:
        self.recovery = recovery
        self.partitions: list[PartitionProgress] = []
        #: Changelog records restored into RocksDB since the worker started (actives and
        #: standbys), counted as the tables apply them (see :meth:`count`).
        self.restored_total = 0
        #: Records/s restored over the last sample, all partitions together.
        self.rate = 0.0
        self._restored_at_last = 0
        self._last: dict[tuple[str, Any], int] = {}
        self._last_time: Optional[float] = None
        self._last_log = 0.0

    def _remaining(self) -> dict[tuple[str, Any], int]:
        r = self.recovery
        try:
            active = {("active", tp): max(0, n) for tp, n in r.active_remaining().items()}
            standby = {("standby", tp): max(0, n) for tp, n in r.standby_remaining().items()}
        except Exception as exc:  # offsets not built yet, or a rebalance resetting them
            log.debug("recovery offsets not known yet: %r", exc)
            return {}
        return {**standby, **active}

    def sample(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        remaining = self._remaining()
        elapsed = None if self._last_time is None else max(1e-6, now - self._last_time)
        progress = []
        for (kind, tp), n in sorted(remaining.items(), key=lambda item: (item[0][0], item[0][1])):
            before = self._last.get((kind, tp))
            done = max(0, before - n) if before is not None else 0
            rate = done / elapsed if elapsed else 0.0
            eta = n / rate if rate > 0 else (0.0 if n == 0 else None)
            progress.append(PartitionProgress(tp.topic, tp.partition, kind, n, rate, eta))
        restored, self._restored_at_last = self.restored_total - self._restored_at_last, self.restored_total
        self.rate = restored / elapsed if elapsed else 0.0
        self.partitions = progress
        self._last, self._last_time = remaining, now

    def count(self, table: Any) -> None:
        """Count the changelog records ``table`` applies (recovery and standby replicas alike)."""
        apply = table.apply_changelog_batch

        def counted(batch: Any, *args: Any, **kwargs: Any) -> Any:
            batch = list(batch)
            self.restored_total += len(batch)
            return apply(batch, *args, **kwargs)

        table.apply_changelog_batch = counted

    def log_progress(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        restoring = [p for p in self.partitions if p.kind == "active" and p.remaining > 0]
        if not restoring or not getattr(self.recovery, "in_recovery", False) or now - self._last_log < LOG_SECONDS:
            return
        self._last_log = now
        for p in restoring:
            eta = "unknown (no progress in the last sample)" if p.eta_seconds is None else f"{p.eta_seconds:.0f} s"
            log.info("recovering %s[%d]: %d changelog records left, %.0f records/s, ETA %s",
                     p.topic, p.partition, p.remaining, p.rate, eta)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            self.sample()
            self.log_progress()
