"""The event envelope (CONTRACT §2): decoding and validation.

A record value is one envelope (a JSON object) or a composite record: a JSON
array of one aggregate's envelopes with consecutive versions. Decoding checks
every field and returns plain :class:`Event` objects, or raises
:class:`InvalidRecord` with the contract's dead-letter reason.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import orjson

from projector.core.errors import InvalidRecord

INVALID_JSON = "invalid_json"
INVALID_ENVELOPE = "invalid_envelope"
KEY_MISMATCH = "key_mismatch"


@dataclass(slots=True)
class Event:
    id: str
    aggregate_id: str
    aggregate_type: str
    type: str
    version: int
    data: dict[str, Any]
    timestamp: Optional[str] = None
    schema_version: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "aggregate_id": self.aggregate_id,
            "aggregate_type": self.aggregate_type,
            "type": self.type,
            "version": self.version,
            "schema_version": self.schema_version,
            "data": self.data,
        }
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.metadata:
            out["metadata"] = self.metadata
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_str(obj: dict, name: str, where: str) -> str:
    value = obj.get(name)
    if value is None:
        raise InvalidRecord(INVALID_ENVELOPE, f"{where}: missing field {name!r}")
    if not isinstance(value, str) or value == "":
        raise InvalidRecord(INVALID_ENVELOPE, f"{where}: {name!r} must be a non-empty string")
    return value


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)")
#: The common shape, with every range but the day of the month in the pattern:
#: ``YYYY-MM-DDThh:mm:ss[.fraction](Z|+hh:mm)``, hours 00-23, seconds up to 60.
_RFC3339_RANGES = re.compile(
    r"(\d{4}-(?:0[1-9]|1[0-2])-\d\d)[Tt ](?:[01]\d|2[0-3]):[0-5]\d:(?:[0-5]\d|60)(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
)


@functools.lru_cache(maxsize=4096)
def _valid_date(date: str) -> bool:
    """A ``YYYY-MM-DD`` with a real day of its month (events of one day share it: cached)."""
    try:
        datetime.fromisoformat(date)
    except ValueError:
        return False
    return True


def _valid_rfc3339(value: str) -> bool:
    """RFC 3339 section 5.6 date-time: full date, full time with seconds, Z or +hh:mm.

    The shape and the ranges of month, hour, minute, second and offset are
    checked by a pattern, the day of the month by ``datetime`` (once per date).
    A value off the common shape takes the general path.
    """
    m = _RFC3339_RANGES.fullmatch(value)
    if m is not None:
        return _valid_date(m.group(1))
    if _RFC3339.fullmatch(value) is None:
        return False
    if value[-6] in "+-" and value[-2:] > "59":
        return False  # fromisoformat takes offset minutes up to 99
    if value[17:19] == "60":
        # A leap second is valid RFC 3339; datetime has no room for it.
        value = value[:17] + "59" + value[19:]
    try:
        datetime.fromisoformat(value.replace("t", "T", 1).replace("z", "Z"))
    except ValueError:
        return False
    return True


def envelope_from_obj(obj: Any, where: str = "event") -> Event:
    """Validate one decoded JSON value as an envelope."""
    if type(obj) is dict:
        # The common case, checked in one go; anything off takes the slow
        # path below, which says exactly what is wrong.
        get = obj.get
        event_id, aggregate_id, aggregate_type, event_type = get("id"), get("aggregate_id"), get("aggregate_type"), get("type")
        version, data, timestamp = get("version"), get("data"), get("timestamp")
        schema_version, metadata = get("schema_version", 1), get("metadata")
        if (
            type(event_id) is str and event_id
            and type(aggregate_id) is str and aggregate_id
            and type(aggregate_type) is str and aggregate_type
            and type(event_type) is str and event_type
            and type(version) is int and version >= 1
            and type(data) is dict
            and type(schema_version) is int and schema_version >= 1
            and (metadata is None or type(metadata) is dict)
            and (timestamp is None or (type(timestamp) is str and _valid_rfc3339(timestamp)))
        ):
            return Event(event_id, aggregate_id, aggregate_type, event_type, version, data, timestamp,
                         schema_version, metadata if metadata is not None else {})
    if not isinstance(obj, dict):
        raise InvalidRecord(INVALID_ENVELOPE, f"{where}: expected a JSON object, got {type(obj).__name__}")
    event_id = _require_str(obj, "id", where)
    aggregate_id = _require_str(obj, "aggregate_id", where)
    aggregate_type = _require_str(obj, "aggregate_type", where)
    event_type = _require_str(obj, "type", where)
    version = obj.get("version")
    if not _is_int(version) or version < 1:
        raise InvalidRecord(INVALID_ENVELOPE, f"{where}: 'version' must be an integer >= 1, got {version!r}")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise InvalidRecord(INVALID_ENVELOPE, f"{where}: 'data' must be a JSON object")
    timestamp = obj.get("timestamp")
    if timestamp is not None and not (isinstance(timestamp, str) and _valid_rfc3339(timestamp)):
        raise InvalidRecord(INVALID_ENVELOPE, f"{where}: 'timestamp' must be an RFC 3339 string, got {timestamp!r}")
    schema_version = obj.get("schema_version", 1)
    if not _is_int(schema_version) or schema_version < 1:
        raise InvalidRecord(
            INVALID_ENVELOPE, f"{where}: 'schema_version' must be an integer >= 1, got {schema_version!r}"
        )
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise InvalidRecord(INVALID_ENVELOPE, f"{where}: 'metadata' must be a JSON object")
    return Event(
        id=event_id,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        type=event_type,
        version=version,
        data=data,
        timestamp=timestamp,
        schema_version=schema_version,
        metadata=metadata,
    )


def decode_record(key: Optional[bytes], value: Optional[bytes]) -> list[Event]:
    """Decode one record of the events topic into its events (one or more).

    Raises :class:`InvalidRecord` with reason ``invalid_json``,
    ``invalid_envelope`` or ``key_mismatch``; a composite record is checked
    whole and fails whole.
    """
    if not value:
        raise InvalidRecord(INVALID_JSON, "empty record value")
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(INVALID_JSON, f"value is not JSON: {exc}") from None
    try:
        key_text = key.decode("utf-8") if key is not None else None
    except UnicodeDecodeError:
        key_text = None
    if type(decoded) is dict:  # the common case: one envelope
        event = envelope_from_obj(decoded)
        if event.aggregate_id == key_text:
            return [event]
    composite = isinstance(decoded, list)
    items = decoded if composite else [decoded]
    if not items:
        raise InvalidRecord(INVALID_ENVELOPE, "composite record is an empty array")
    events = []
    # Elements are checked in order, so a bad record reports its first bad element.
    for i, item in enumerate(items):
        where = f"element {i}" if composite else "event"
        event = envelope_from_obj(item, where)
        if event.aggregate_id != key_text:
            raise InvalidRecord(
                KEY_MISMATCH,
                f"{where}: aggregate_id {event.aggregate_id!r} differs from the record key "
                f"{key_text if key_text is not None else key!r}",
            )
        events.append(event)
    for prev, nxt in zip(events, events[1:]):
        if nxt.version != prev.version + 1:
            raise InvalidRecord(
                INVALID_ENVELOPE,
                f"composite record versions must be consecutive: {prev.version} then {nxt.version}",
            )
    return events
