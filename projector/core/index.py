"""The aggregate index: per-aggregate version state, the stored events, parked records.

One changelog-backed RocksDB table holds, per aggregate id ``A``:

- ``m\\0A``            -> ``{"version": last applied, "parked": bool, "tail": [...]}``,
  where ``tail`` holds the newest events (fewer than ``CHUNK``);
- ``e\\0A\\0<last>``    -> a full chunk of ``CHUNK`` consecutive events, keyed by its
  last version zero-padded to 10 digits, so a range scan from ``e\\0A\\0<from>``
  starts at the chunk that holds ``from`` and reads the stream in order.

Keeping the newest events in the aggregate's meta row means a batch writes
one index record per aggregate it touches, not one per event.
- ``p\\0A\\0<first>-<last>`` -> a parked record (its events, its original key
  and value, and where it came from), kept until an operator releases the aggregate.

NUL and \\1 in aggregate ids are escaped, so one id's prefix never covers another's keys.

:func:`admit` applies CONTRACT §2's version rules to one record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import orjson

from projector.core.envelope import Event

META = b"m\x00"
EVENT = b"e\x00"
PARKED = b"p\x00"
SEP = b"\x00"

APPLY = "apply"
DUPLICATE = "duplicate"
GAP = "version_gap"
PARKED_REASON = "parked"


def _aid(aggregate_id: str) -> bytes:
    # Escape NUL (and the escape byte), so one id's prefix never covers another's keys.
    return aggregate_id.encode("utf-8").replace(b"\x01", b"\x01\x02").replace(b"\x00", b"\x01\x01")


def meta_key(aggregate_id: str) -> bytes:
    return META + _aid(aggregate_id)


def event_prefix(aggregate_id: str) -> bytes:
    return EVENT + _aid(aggregate_id) + SEP


def event_key(aggregate_id: str, version: int) -> bytes:
    return event_prefix(aggregate_id) + b"%010d" % version


def parked_prefix(aggregate_id: str) -> bytes:
    return PARKED + _aid(aggregate_id) + SEP


def parked_key(aggregate_id: str, first_version: int, last_version: int) -> bytes:
    # Keyed by first and last version, so overlapping re-sends are all kept.
    return parked_prefix(aggregate_id) + b"%010d-%010d" % (first_version, last_version)


CHUNK = 32


@dataclass
class Meta:
    version: int = 0
    parked: bool = False
    tail: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: Optional[dict[str, Any]]) -> "Meta":
        if not obj:
            return cls()
        return cls(version=obj["version"], parked=obj.get("parked", False), tail=obj.get("tail", []))

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "parked": self.parked, "tail": self.tail}

    def append(self, envelopes: Sequence[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
        """Record applied events; return the chunks that filled up, as ``(last version, events)``."""
        sealed = []
        for envelope in envelopes:
            self.tail.append(envelope)
            if len(self.tail) == CHUNK:
                sealed.append((envelope["version"], self.tail))
                self.tail = []
        if envelopes:
            self.version = envelopes[-1]["version"]
        return sealed


def stored_events(
    meta: Meta, chunks: Iterable[tuple[bytes, bytes]], from_version: int, limit: int
) -> tuple[list[dict[str, Any]], Optional[int]]:
    """Up to ``limit`` stored events from ``from_version`` on, and the version to ask for next.

    ``chunks`` are the sealed chunks from a scan starting at ``event_key(id, from_version)``.
    The next version is ``None`` when no later event is stored yet.
    """
    out: list[dict[str, Any]] = []

    def take(events: Iterable[dict[str, Any]]) -> bool:
        for e in events:
            if e["version"] >= from_version:
                if len(out) == limit:
                    return False
                out.append(e)
        return True

    more = True
    for _, raw in chunks:
        more = take(orjson.loads(raw))
        if not more:
            break
    if more:
        more = take(meta.tail)
    last = out[-1]["version"] if out else from_version - 1
    next_version = last + 1 if last < meta.version else None
    return out, next_version


@dataclass
class Admission:
    outcome: str  # APPLY, DUPLICATE, GAP or PARKED_REASON
    events: list[Event] = field(default_factory=list)  # the events newer than the last applied
    duplicates: int = 0


def admit(meta: Meta, events: Sequence[Event]) -> Admission:
    """Classify one record's events (consecutive, of one aggregate) against ``meta``.

    Events at or below the last applied version are duplicates, skipped even
    while the aggregate is parked. The rest must start at last + 1; otherwise
    the record is a gap. Any newer event of a parked aggregate is parked.
    """
    if not meta.parked and events[0].version == meta.version + 1:
        return Admission(APPLY, list(events), 0)  # the common case: next in line, no duplicates
    fresh = [e for e in events if e.version > meta.version]
    duplicates = len(events) - len(fresh)
    if not fresh:
        return Admission(DUPLICATE, [], duplicates)
    if meta.parked:
        return Admission(PARKED_REASON, fresh, duplicates)
    if fresh[0].version != meta.version + 1:
        return Admission(GAP, fresh, duplicates)
    return Admission(APPLY, fresh, duplicates)
