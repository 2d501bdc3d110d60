"""The aggregate index: per-aggregate version state, the stored events, parked records.

One changelog-backed RocksDB table holds, per aggregate id ``A``:

- ``m\\0A``            -> ``{"version": last applied, "parked": bool}``;
- ``e\\0A\\0<last>``    -> a segment: a JSON array of consecutive events, keyed by
  its last version zero-padded to 10 digits, so a range scan from
  ``e\\0A\\0<from>`` starts at the segment that holds ``from`` and reads the
  stream in order;
- ``p\\0A\\0<first>-<last>`` -> a parked record (its events, its original key
  and value, and where it came from), kept until an operator releases the aggregate.

Segments are append-only: a batch writes one new segment per aggregate it
applied events to (split at :data:`SEGMENT_MAX` events or :data:`SEGMENT_BYTES`), holding just those
events, each encoded once. A stored segment is never read or re-encoded
again by the fold. Readers skip an event whose version they have already
read, so segments that overlap (a batch replayed after a crash can cut its
segment elsewhere) read as one stream.

Entries written before segments (a meta row with a ``tail`` of its newest
events, and full chunks of 32 events) read the same way: a chunk is a
segment, and the first append to such an aggregate moves its tail into the
new segment.

NUL and \\1 in aggregate ids are escaped, so one id's prefix never covers another's keys.

:func:`admit` applies CONTRACT §2's version rules to one record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

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


def parked_aggregates(scan: Callable[[bytes, Optional[bytes]], Iterator[tuple[bytes, bytes]]]) -> int:
    """How many aggregates of one index partition have parked records now.

    ``scan(prefix, start)`` reads the partition's keys with ``prefix`` from
    ``start`` (:meth:`projector.core.engine.Store.scan`). One key is read per
    parked aggregate: the next scan starts past that aggregate's records
    (an escaped id holds no NUL, and ``\\1`` sorts after the separator).
    """
    count, start = 0, None
    while True:
        key = next((k for k, _ in scan(PARKED, start)), None)
        if key is None:
            return count
        count += 1
        end = key.find(SEP, len(PARKED))
        start = key[:end if end >= 0 else len(key)] + b"\x01"


#: The most events, and bytes, one segment holds (a single larger event gets a
#: segment of its own), so a batch that brings an aggregate many events still
#: writes changelog records well under Kafka's default 1 MiB limit.
SEGMENT_MAX = 64
SEGMENT_BYTES = 256 * 1024


@dataclass
class Meta:
    version: int = 0
    parked: bool = False
    #: The newest events of an entry written before segments; moved into a segment on the next append.
    tail: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: Optional[dict[str, Any]]) -> "Meta":
        if not obj:
            return cls()
        return cls(version=obj["version"], parked=obj.get("parked", False), tail=obj.get("tail") or [])

    def to_json(self) -> dict[str, Any]:
        if self.tail:
            return {"version": self.version, "parked": self.parked, "tail": self.tail}
        return {"version": self.version, "parked": self.parked}

    def segments(
        self, encoded: Sequence[tuple[int, bytes]], max_bytes: int = SEGMENT_BYTES
    ) -> list[tuple[int, bytes]]:
        """The segments for newly applied events, each ``(version, event JSON)``: ``(last version, value)``.

        Takes a legacy tail along (its events come first), so the entry no
        longer holds events. ``encoded`` must follow :attr:`version`'s events.
        A segment holds at most :data:`SEGMENT_MAX` events and ``max_bytes``
        (at most :data:`SEGMENT_BYTES`), unless it is a single larger event.
        """
        max_bytes = min(max_bytes, SEGMENT_BYTES)
        if self.tail:
            encoded = [(e["version"], orjson.dumps(e)) for e in self.tail] + list(encoded)
            self.tail = []
        out = []
        piece: list[bytes] = []
        size = 0
        for i, (version, raw) in enumerate(encoded):
            piece.append(raw)
            size += len(raw) + 1
            last = i + 1 == len(encoded)
            if last or len(piece) == SEGMENT_MAX or size + len(encoded[i + 1][1]) + 2 > max_bytes:
                out.append((version, b"[" + b",".join(piece) + b"]"))
                piece, size = [], 0
        return out


def stored_events(
    meta: Meta, segments: Iterable[tuple[bytes, bytes]], from_version: int, limit: int
) -> tuple[list[dict[str, Any]], Optional[int]]:
    """Up to ``limit`` stored events from ``from_version`` on, and the version to ask for next.

    ``segments`` come from a scan starting at ``event_key(id, from_version)``.
    An event at or below one already taken is skipped (overlapping segments).
    The next version is ``None`` when no later event is stored yet.
    """
    out: list[dict[str, Any]] = []
    after = from_version - 1

    def take(events: Iterable[dict[str, Any]]) -> bool:
        nonlocal after
        for e in events:
            if e["version"] > after:
                if len(out) == limit:
                    return False
                out.append(e)
                after = e["version"]
        return True

    more = True
    for _, raw in segments:
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
