"""projector.core.envelope: decoding event-topic records (CONTRACT §2)."""

from __future__ import annotations

from typing import Any, Optional

import orjson
import pytest
from factories import envelope

from projector.core.envelope import (
    INVALID_ENVELOPE,
    INVALID_JSON,
    KEY_MISMATCH,
    Event,
    decode_record,
    envelope_from_obj,
)
from projector.core.errors import InvalidRecord

KEY = b"acc-1"
REQUIRED_STRINGS = ("id", "aggregate_id", "aggregate_type", "type")


def decode(value: Any, key: Optional[bytes] = KEY) -> list[Event]:
    return decode_record(key, orjson.dumps(value))


def reason_of(key: Optional[bytes], value: Optional[bytes]) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        decode_record(key, value)
    return info.value


def without(env: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in env.items() if k != name}


# --- a valid envelope -------------------------------------------------------


def test_valid_envelope_decodes_to_one_event_with_every_field():
    env = envelope(
        timestamp="2026-01-01T00:00:00Z",
        schema_version=2,
        metadata={"correlation_id": "c-1", "user": "bob"},
    )
    [ev] = decode(env)
    assert ev == Event(
        id="acc-1/1",
        aggregate_id="acc-1",
        aggregate_type="account",
        type="AccountOpened",
        version=1,
        data={"owner": "alice", "currency": "EUR"},
        timestamp="2026-01-01T00:00:00Z",
        schema_version=2,
        metadata={"correlation_id": "c-1", "user": "bob"},
    )


def test_optional_fields_take_their_defaults():
    [ev] = decode(envelope())
    assert ev.timestamp is None
    assert ev.schema_version == 1
    assert ev.metadata == {}


def test_null_optional_fields_count_as_absent():
    [ev] = decode(envelope(timestamp=None, metadata=None))
    assert ev.timestamp is None
    assert ev.metadata == {}


def test_to_dict_round_trips_through_the_decoder():
    env = envelope(timestamp="2026-01-01T00:00:00+02:00", schema_version=3, metadata={"user": "u"})
    [ev] = decode(env)
    [again] = decode(ev.to_dict())
    assert again == ev
    assert ev.to_dict() == env


def test_to_dict_leaves_out_absent_optional_fields():
    [ev] = decode(envelope())
    out = ev.to_dict()
    assert "timestamp" not in out
    assert "metadata" not in out
    assert out["schema_version"] == 1


def test_large_version_is_accepted():
    [ev] = decode(envelope(version=2**40, type="MoneyDeposited", data={"amount": 1}))
    assert ev.version == 2**40


def test_utf8_key_matches_a_non_ascii_aggregate_id():
    [ev] = decode(envelope(aggregate_id="konto-ä€"), key="konto-ä€".encode("utf-8"))
    assert ev.aggregate_id == "konto-ä€"


# --- required fields ---------------------------------------------------------


@pytest.mark.parametrize("name", [*REQUIRED_STRINGS, "version", "data"])
def test_missing_required_field_is_invalid_envelope(name):
    err = reason_of(KEY, orjson.dumps(without(envelope(), name)))
    assert err.reason == INVALID_ENVELOPE
    assert repr(name) in err.message


@pytest.mark.parametrize("name", REQUIRED_STRINGS)
@pytest.mark.parametrize("bad", [1, 1.5, True, [], {}, ""], ids=repr)
def test_ill_typed_string_field_is_invalid_envelope(name, bad):
    err = reason_of(KEY, orjson.dumps(envelope(**{name: bad})))
    assert err.reason == INVALID_ENVELOPE
    assert repr(name) in err.message


@pytest.mark.parametrize("name", REQUIRED_STRINGS)
def test_null_string_field_is_reported_missing(name):
    err = reason_of(KEY, orjson.dumps(envelope(**{name: None})))
    assert err.reason == INVALID_ENVELOPE
    assert repr(name) in err.message


@pytest.mark.parametrize(
    "text",
    [b"0", b"-1", b"true", b"false", b"1.0", b"1.5", b"1e0", b'"1"', b"null", b"[1]", b'{"v":1}',
     b"1000000000000000000000000000000"],
)
def test_bad_version_is_invalid_envelope(text):
    # Booleans are never integers; 1.0 and 1e0 are JSON floats; the last one does not
    # fit in 64 bits (orjson reads it as a float).
    raw = orjson.dumps(envelope(version=1))
    assert raw.count(b'"version":1,') == 1
    err = reason_of(KEY, raw.replace(b'"version":1,', b'"version":' + text + b","))
    assert err.reason == INVALID_ENVELOPE
    assert "'version'" in err.message


@pytest.mark.parametrize("bad", [None, [], [{"amount": 1}], "x", 1, True], ids=repr)
def test_data_must_be_an_object(bad):
    env = {**envelope(), "data": bad}
    err = reason_of(KEY, orjson.dumps(env))
    assert err.reason == INVALID_ENVELOPE
    assert "'data'" in err.message


def test_empty_data_object_is_valid():
    [ev] = decode(envelope(type="AccountClosed", data={}))
    assert ev.data == {}


# --- optional fields ---------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T00:00:00+01:00",
        "2026-06-30T23:59:59-05:30",
        "2026-01-01T00:00:00.123Z",
        "2026-01-01T00:00:00.123456+14:00",
        "2026-01-01T00:00:00.123456789Z",
        "2026-01-01t00:00:00z",
    ],
)
def test_rfc3339_timestamps_are_accepted(ts):
    [ev] = decode(envelope(timestamp=ts))
    assert ev.timestamp == ts


@pytest.mark.parametrize(
    "ts",
    [
        "",
        "yesterday",
        "2026-01-01",  # a date without a time
        "2026-01-01T00:00:00",  # no offset
        "2026-01-01T00:00:00.123",  # no offset
        "2026-01-01X00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T25:00:00Z",
        "20260101T000000Z",
        "1767225600",
    ],
)
def test_non_rfc3339_timestamp_strings_are_invalid_envelope(ts):
    err = reason_of(KEY, orjson.dumps(envelope(timestamp=ts)))
    assert err.reason == INVALID_ENVELOPE
    assert "'timestamp'" in err.message


@pytest.mark.parametrize("ts", [1767225600, 1.5, True, [], {}], ids=repr)
def test_non_string_timestamp_is_invalid_envelope(ts):
    err = reason_of(KEY, orjson.dumps(envelope(timestamp=ts)))
    assert err.reason == INVALID_ENVELOPE
    assert "'timestamp'" in err.message


@pytest.mark.parametrize(
    "ts",
    [
        "2026-01-01T00:00:00+0100",
        "2026-01-01T00:00:00+01",
        "2026-01-01T00:00:00+01:00:30",
        "2026-W01-1T00:00:00Z",
        "2026-01-01T00:00:00,5Z",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00+01:00:00",
        "2026-01-01T00:00:00 +01:00",
    ],
)
def test_iso8601_forms_outside_rfc3339_are_invalid_envelope(ts):
    err = reason_of(KEY, orjson.dumps(envelope(timestamp=ts)))
    assert err.reason == INVALID_ENVELOPE


def test_leap_second_timestamp_is_accepted():
    [ev] = decode(envelope(timestamp="2016-12-31T23:59:60Z"))
    assert ev.timestamp == "2016-12-31T23:59:60Z"


@pytest.mark.parametrize("sv", [1, 2, 99])
def test_schema_version_is_kept(sv):
    [ev] = decode(envelope(schema_version=sv))
    assert ev.schema_version == sv


@pytest.mark.parametrize("sv", [0, -1, True, 1.5, "2", [], {}], ids=repr)
def test_bad_schema_version_is_invalid_envelope(sv):
    err = reason_of(KEY, orjson.dumps(envelope(schema_version=sv)))
    assert err.reason == INVALID_ENVELOPE
    assert "'schema_version'" in err.message


def test_null_schema_version_is_invalid_envelope():
    # An explicit null is not an integer >= 1 (only an absent field defaults to 1).
    err = reason_of(KEY, orjson.dumps(envelope(schema_version=None)))
    assert err.reason == INVALID_ENVELOPE


def test_metadata_object_is_kept():
    meta = {"correlation_id": "c", "causation_id": "d", "user": "u", "nested": {"a": [1, 2]}}
    [ev] = decode(envelope(metadata=meta))
    assert ev.metadata == meta


@pytest.mark.parametrize("bad", ["x", 1, [], [{"a": 1}], True], ids=repr)
def test_metadata_must_be_an_object(bad):
    err = reason_of(KEY, orjson.dumps(envelope(metadata=bad)))
    assert err.reason == INVALID_ENVELOPE
    assert "'metadata'" in err.message


# --- values that are not an envelope at all ------------------------------------


@pytest.mark.parametrize("raw", [b"1", b'"x"', b"null", b"true", b"1.5", b"[1]", b'["x"]', b"[null]", b"[[{}]]"])
def test_json_that_is_not_an_object_or_array_of_objects_is_invalid_envelope(raw):
    err = reason_of(KEY, raw)
    assert err.reason == INVALID_ENVELOPE


@pytest.mark.parametrize("raw", [None, b""], ids=["tombstone", "empty"])
def test_empty_value_is_invalid_json(raw):
    assert reason_of(KEY, raw).reason == INVALID_JSON


@pytest.mark.parametrize(
    "raw",
    [b"   ", b"{", b"{'id': 1}", b"\xff\xfe\x00", b"\x80", b'{"id": "\xff"}', b"NaN", b"not json", b"{}{}",
     b"\xef\xbb\xbf{}"],
)
def test_undecodable_bytes_are_invalid_json(raw):
    assert reason_of(KEY, raw).reason == INVALID_JSON


def test_envelope_from_obj_rejects_non_objects_directly():
    with pytest.raises(InvalidRecord) as info:
        envelope_from_obj(["not", "an", "object"], "element 3")
    assert info.value.reason == INVALID_ENVELOPE
    assert "element 3" in info.value.message


def test_envelope_from_obj_accepts_a_valid_dict():
    ev = envelope_from_obj(envelope(version=7, type="MoneyDeposited", data={"amount": 5}))
    assert (ev.version, ev.type, ev.data) == (7, "MoneyDeposited", {"amount": 5})


# --- the record key ------------------------------------------------------------


@pytest.mark.parametrize("key", [b"acc-2", b"ACC-1", b"acc-1 ", b"", None, b"\xff\xfeacc-1"], ids=repr)
def test_key_that_differs_from_aggregate_id_is_key_mismatch(key):
    err = reason_of(key, orjson.dumps(envelope()))
    assert err.reason == KEY_MISMATCH
    assert "acc-1" in err.message


def test_non_utf8_key_never_matches_even_a_lookalike_id():
    latin1 = "konto-ä".encode("latin-1")  # b"konto-\xe4": not UTF-8
    err = reason_of(latin1, orjson.dumps(envelope(aggregate_id="konto-ä")))
    assert err.reason == KEY_MISMATCH


def test_invalid_envelope_is_reported_before_the_key_is_compared():
    bad = without(envelope(aggregate_id="other"), "type")
    assert reason_of(KEY, orjson.dumps(bad)).reason == INVALID_ENVELOPE


# --- composite records -------------------------------------------------------------


def composite(*versions: int, aggregate_id: str = "acc-1") -> list[dict[str, Any]]:
    return [
        envelope(aggregate_id, v, "AccountOpened" if v == 1 else "MoneyDeposited",
                 None if v == 1 else {"amount": v})
        for v in versions
    ]


def test_valid_composite_record_decodes_in_order():
    events = decode(composite(1, 2, 3))
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.type for e in events] == ["AccountOpened", "MoneyDeposited", "MoneyDeposited"]


def test_composite_of_one_element_is_valid():
    [ev] = decode(composite(4))
    assert ev.version == 4


def test_composite_may_start_at_any_version():
    assert [e.version for e in decode(composite(5, 6))] == [5, 6]


def test_empty_composite_is_invalid_envelope():
    assert reason_of(KEY, b"[]").reason == INVALID_ENVELOPE


@pytest.mark.parametrize("versions", [(1, 3), (2, 1), (1, 1), (1, 2, 4), (3, 2, 1)])
def test_composite_with_non_consecutive_versions_is_invalid_envelope(versions):
    err = reason_of(KEY, orjson.dumps(composite(*versions)))
    assert err.reason == INVALID_ENVELOPE
    assert "consecutive" in err.message


@pytest.mark.parametrize("bad_index", [0, 1, 2])
def test_composite_with_a_bad_element_reports_that_element(bad_index):
    items = composite(1, 2, 3)
    items[bad_index] = without(items[bad_index], "data")
    err = reason_of(KEY, orjson.dumps(items))
    assert err.reason == INVALID_ENVELOPE
    assert f"element {bad_index}" in err.message


def test_composite_with_a_non_object_element_is_invalid_envelope():
    err = reason_of(KEY, orjson.dumps([*composite(1), 7]))
    assert err.reason == INVALID_ENVELOPE
    assert "element 1" in err.message


def test_composite_with_a_mis_keyed_element_is_key_mismatch():
    items = composite(1, 2, 3)
    items[1]["aggregate_id"] = "acc-2"
    err = reason_of(KEY, orjson.dumps(items))
    assert err.reason == KEY_MISMATCH
    assert "element 1" in err.message


def test_composite_reports_the_first_bad_element_mis_keyed_before_invalid():
    items = composite(1, 2, 3)
    items[0]["aggregate_id"] = "acc-2"  # key_mismatch in element 0
    items[2] = without(items[2], "id")  # invalid_envelope in element 2
    err = reason_of(KEY, orjson.dumps(items))
    assert err.reason == KEY_MISMATCH
    assert "element 0" in err.message


def test_composite_reports_the_first_bad_element_invalid_before_mis_keyed():
    items = composite(1, 2, 3)
    items[0]["version"] = True  # invalid_envelope in element 0
    items[1]["aggregate_id"] = "acc-2"  # key_mismatch in element 1
    err = reason_of(KEY, orjson.dumps(items))
    assert err.reason == INVALID_ENVELOPE
    assert "element 0" in err.message


def test_composite_with_a_bad_element_reports_it_even_when_versions_also_skip():
    items = composite(1, 3, 4)  # versions not consecutive...
    items[2]["aggregate_id"] = "acc-9"  # ...and element 2 is mis-keyed
    err = reason_of(KEY, orjson.dumps(items))
    assert err.reason == KEY_MISMATCH
    assert "element 2" in err.message


def test_composite_with_none_key_is_key_mismatch():
    assert reason_of(None, orjson.dumps(composite(1, 2))).reason == KEY_MISMATCH


def test_invalid_record_carries_reason_and_message():
    err = InvalidRecord(INVALID_JSON, "boom")
    assert (err.reason, err.message, str(err)) == (INVALID_JSON, "boom", "boom")
