"""The projection engine: batches of event records -> read-model rows.

Each batch is folded per key in memory; every touched key is written once per
batch, so the changelog gets one record per key per batch, not one per event.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Protocol, Sequence

from projector.envelope import InvalidRecord, decode_record
from projector.metrics import Metrics
from projector.projection import RecordRejected, apply_record
from projector.readmodels import ReadModel

log = logging.getLogger(__name__)


class Rows(Protocol):
    def get(self, partition: int, key: bytes) -> Optional[dict[str, Any]]: ...
    def put(self, partition: int, key: bytes, row: dict[str, Any]) -> None: ...


class Record(Protocol):
    """What the engine needs of a consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]


class Engine:
    def __init__(self, models: Sequence[ReadModel], rows: dict[str, Rows], metrics: Metrics) -> None:
        unsupported = [m.name for m in models if not m.keyed_by_aggregate]
        if unsupported:
            raise NotImplementedError(
                f"read models keyed by something other than the aggregate id are not supported yet: {unsupported}"
            )
        self.models = list(models)
        self.rows = rows
        self.metrics = metrics

    def apply_batch(self, records: Iterable[Record]) -> None:
        pending: dict[tuple[str, int, bytes], dict[str, Any]] = {}
        for record in records:
            self.metrics.records_seen += 1
            try:
                events = decode_record(record.key, record.value)
            except InvalidRecord as exc:
                self._reject(record, exc.reason, exc.message)
                continue
            key = record.key
            assert key is not None  # decode_record checked it against aggregate_id
            # All read models take the record, or none does.
            updates = {}
            duplicates = 0
            try:
                for model in self.models:
                    slot = (model.name, record.partition, key)
                    row = pending[slot] if slot in pending else self.rows[model.name].get(record.partition, key)
                    result = apply_record(model, row, events)
                    duplicates = max(duplicates, result.duplicates)
                    if result.changed:
                        updates[slot] = (model.name, result)
            except RecordRejected as exc:
                self._reject(record, exc.reason, exc.message)
                continue
            for slot, (name, result) in updates.items():
                pending[slot] = result.row
                self.metrics.events_applied[name] += result.applied
            self.metrics.duplicates += duplicates
        for (name, partition, key), row in pending.items():
            self.rows[name].put(partition, key, row)
        self.metrics.batches += 1

    def _reject(self, record: Record, reason: str, message: str) -> None:
        self.metrics.rejected[reason] += 1
        log.warning(
            "skipping record %s/%d/%d (%s): %s", record.topic, record.partition, record.offset, reason, message
        )
