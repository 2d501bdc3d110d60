"""Applying decoded records to read-model rows: pure, no Faust, no Kafka.

A row is ``{"version": <last applied aggregate version>, "value": <state>}``.
Keeping the version in the row is what makes folds idempotent: an event at or
below it is a duplicate and is skipped, so a replay after a crash or a
rebalance never applies an event twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import orjson

from projector.envelope import Event
from projector.readmodels import ReadModel

FOLD_ERROR = "fold_error"
VERSION_GAP = "version_gap"


class RecordRejected(Exception):
    """A record that cannot be applied; ``reason`` is a CONTRACT §2 reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Applied:
    row: Optional[dict[str, Any]]
    applied: int = 0
    duplicates: int = 0

    @property
    def changed(self) -> bool:
        return self.applied > 0


def apply_record(model: ReadModel, row: Optional[dict[str, Any]], events: Sequence[Event]) -> Applied:
    """Apply one record's events (all of one aggregate) to ``row``, all or nothing.

    Events at or below the row's version are duplicates. The rest must follow
    on consecutively, or the record is rejected with ``version_gap``; a fold
    that raises rejects it with ``fold_error``. On rejection ``row`` is unchanged.
    """
    version = row["version"] if row else 0
    # A private copy, so a fold that changes its state in place cannot leak a
    # rejected record's first events into the row (states are JSON anyway).
    state = orjson.loads(orjson.dumps(row["value"])) if row else model.initial_state()
    result = Applied(row=row)
    for event in events:
        if event.version <= version:
            result.duplicates += 1
            continue
        if event.version != version + 1:
            raise RecordRejected(
                VERSION_GAP,
                f"aggregate {event.aggregate_id}: expected version {version + 1}, got {event.version}",
            )
        if event.type in model.handles:
            try:
                state = model.fold(state, event)
            except Exception as exc:  # a fold is user code: any error rejects the record
                raise RecordRejected(
                    FOLD_ERROR,
                    f"{model.name}: fold of {event.type} v{event.version} of {event.aggregate_id} "
                    f"raised {type(exc).__name__}: {exc}",
                ) from exc
        version = event.version
        result.applied += 1
    if result.applied:
        result.row = {"version": version, "value": state}
    return result
