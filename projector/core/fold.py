"""Applying admitted events to one read model's row: pure, no Faust, no Kafka.

A row is ``{"version": <aggregate version of the last applied event>, "value": <state>}``.
The aggregate index (:mod:`projector.core.index`) decides which events are
new and in order; the row's own version is the second guard that makes a
replay idempotent: an event at or below it has already been applied to this
row (say, before a crash that came before the index was written), and is
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import orjson

from projector.core.catalog import ReadModel
from projector.core.envelope import Event
from projector.core.errors import InvalidRecord

FOLD_ERROR = "fold_error"


@dataclass
class Applied:
    row: Optional[dict[str, Any]]
    applied: int = 0
    duplicates: int = 0

    @property
    def changed(self) -> bool:
        return self.applied > 0


#: What a fold that takes the control table sees when no control table is wired in.
NO_CONTROL: Mapping[str, Any] = MappingProxyType({})


def apply_record(
    model: ReadModel, row: Optional[dict[str, Any]], events: Sequence[Event], control: Mapping[str, Any] = NO_CONTROL
) -> Applied:
    """Fold the events ``model`` handles into ``row``, all or nothing.

    Events of types the model does not handle are ignored (the row is neither
    created nor advanced by them). A fold that raises rejects the whole
    record with ``fold_error`` and leaves ``row`` as it was.
    """
    handles = model.handles
    handled = sum(1 for e in events if e.type in handles)
    result = fold_events(model, row, events, control)
    if result is None:
        return Applied(row=row, duplicates=handled)
    new_row, applied = result
    return Applied(row=new_row, applied=applied, duplicates=handled - applied)


def fold_events(
    model: ReadModel, row: Optional[dict[str, Any]], events: Sequence[Event], control: Mapping[str, Any] = NO_CONTROL
) -> Optional[tuple[dict[str, Any], int]]:
    """:func:`apply_record` for the engine: ``(new row, events applied)``, or ``None`` when nothing applied."""
    version = row["version"] if row else 0
    handles = model.handles
    if len(events) == 1:  # the common case, without the list building
        event = events[0]
        if event.type not in handles or event.version <= version:
            return None
        fresh: Sequence[Event] = events
    else:
        fresh = [e for e in events if e.type in handles and e.version > version]
        if not fresh:
            return None
    # A private copy, so a fold that changes its state in place cannot leak a
    # rejected record's first events into the row (states are JSON anyway).
    state = orjson.loads(orjson.dumps(row["value"])) if row else model.initial_state()
    fold, takes_control = model.fold, model.takes_control
    for event in fresh:
        try:
            state = fold(state, event, control) if takes_control else fold(state, event)
        except Exception as exc:  # a fold is user code: any error rejects the record
            raise InvalidRecord(
                FOLD_ERROR,
                f"{model.name}: fold of {event.type} v{event.version} of {event.aggregate_id} "
                f"raised {type(exc).__name__}: {exc}",
            ) from exc
    return {"version": fresh[-1].version, "value": state}, len(fresh)
