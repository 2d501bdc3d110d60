"""projector.core.index: index keys, Meta, and admit's version rules (CONTRACT §2)."""

from __future__ import annotations

import orjson
import pytest
from factories import deposit, event, opened
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.core import index as agg
from projector.core.index import SEGMENT_BYTES, SEGMENT_MAX, Admission, Meta, admit, stored_events


def deposits(first: int, last: int, aid: str = "acc-1"):
    return [deposit(aid, v, 10) for v in range(first, last + 1)]


def versions(admission: Admission) -> list[int]:
    return [e.version for e in admission.events]


# --- keys -------------------------------------------------------------------------------


def test_key_layout():
    assert agg.meta_key("acc-1") == b"m\x00acc-1"
    assert agg.event_prefix("acc-1") == b"e\x00acc-1\x00"
    assert agg.event_key("acc-1", 7) == b"e\x00acc-1\x000000000007"
    assert agg.parked_prefix("acc-1") == b"p\x00acc-1\x00"
    assert agg.parked_key("acc-1", 12, 13) == b"p\x00acc-1\x000000000012-0000000013"


def test_keys_encode_the_aggregate_id_as_utf8():
    assert agg.event_key("kü", 1) == b"e\x00k\xc3\xbc\x000000000001"
    assert agg.meta_key("kü") == "m\x00kü".encode()


@given(st.lists(st.integers(min_value=1, max_value=10**10 - 1), min_size=2, max_size=30, unique=True))
@settings(max_examples=50, deadline=None)
def test_event_keys_sort_versions_numerically(vs):
    keys = sorted(agg.event_key("a", v) for v in vs)
    assert keys == [agg.event_key("a", v) for v in sorted(vs)]
    parked = sorted(agg.parked_key("a", v, v) for v in vs)
    assert parked == [agg.parked_key("a", v, v) for v in sorted(vs)]


def test_version_9_sorts_before_10_and_99_before_100():
    assert agg.event_key("a", 9) < agg.event_key("a", 10) < agg.event_key("a", 99) < agg.event_key("a", 100)


def test_prefix_of_one_aggregate_does_not_cover_another_whose_id_extends_it():
    assert agg.event_key("acc-1", 1).startswith(agg.event_prefix("acc-1"))
    assert not agg.event_key("acc-10", 1).startswith(agg.event_prefix("acc-1"))
    assert not agg.parked_key("acc-10", 1, 1).startswith(agg.parked_prefix("acc-1"))
    assert not agg.meta_key("acc-1").startswith(agg.event_prefix("acc-1"))


def test_kinds_of_keys_do_not_share_prefixes():
    kinds = {agg.meta_key("a")[:2], agg.event_key("a", 1)[:2], agg.parked_key("a", 1, 1)[:2]}
    assert len(kinds) == 3


# --- Meta -------------------------------------------------------------------------------


def test_meta_defaults_and_json_round_trip():
    assert Meta() == Meta(version=0, parked=False)
    assert Meta.from_json(None) == Meta()
    assert Meta.from_json({}) == Meta()
    assert Meta.from_json({"version": 4}) == Meta(4, False)
    m = Meta(7, True)
    assert m.to_json() == {"version": 7, "parked": True}
    assert Meta.from_json(m.to_json()) == m
    legacy = Meta.from_json({"version": 7, "parked": True, "tail": [{"version": 7}]})
    assert legacy.tail == [{"version": 7}]
    assert legacy.to_json() == {"version": 7, "parked": True, "tail": [{"version": 7}]}  # never dropped unsaved


def encoded(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(v, orjson.dumps({"version": v})) for v in range(first, last + 1)]


def read(meta: Meta, segments: list[tuple[int, bytes]], from_version: int = 1, limit: int = 10**6):
    """stored_events over ``segments`` as a range scan from ``from_version`` hands them over."""
    rows = sorted((agg.event_key("a", last), value) for last, value in segments)
    start = agg.event_key("a", from_version)
    events, next_version = stored_events(meta, [(k, v) for k, v in rows if k >= start], from_version, limit)
    return [e["version"] for e in events], next_version


def test_segments_hold_each_new_event_once_split_at_the_maximum():
    m = Meta(version=SEGMENT_MAX + 5)
    segments = m.segments(encoded(1, SEGMENT_MAX + 5))
    assert [last for last, _ in segments] == [SEGMENT_MAX, SEGMENT_MAX + 5]
    assert [e["version"] for e in orjson.loads(segments[1][1])] == list(range(SEGMENT_MAX + 1, SEGMENT_MAX + 6))
    assert read(m, segments, 3, 10) == (list(range(3, 13)), 13)
    assert read(m, segments, SEGMENT_MAX + 2) == (list(range(SEGMENT_MAX + 2, SEGMENT_MAX + 6)), None)
    assert read(m, segments, SEGMENT_MAX + 6) == ([], None)


def test_segments_stay_under_the_byte_limit_and_a_larger_event_gets_its_own():
    big = b'{"version":%d,"data":"' + b"x" * (SEGMENT_BYTES // 3) + b'"}'
    encoded_events = [(v, big % v) for v in range(1, 8)]
    encoded_events.insert(3, (0, b"y" * (SEGMENT_BYTES + 10)))  # one event alone over the limit
    encoded_events = [(i + 1, raw) for i, (_, raw) in enumerate(encoded_events)]
    segments = Meta().segments(encoded_events)
    assert all(len(value) <= SEGMENT_BYTES for _, value in segments if value.count(b"y") == 0)
    assert [last for last, _ in segments] == [2, 3, 4, 6, 8]
    assert b"".join(value for _, value in segments).count(b'"version"') == 7


def test_appending_writes_only_a_new_segment():
    m = Meta(version=3)
    first = m.segments(encoded(1, 3))
    m.version = 5
    second = m.segments(encoded(4, 5))
    assert second == [(5, b'[{"version":4},{"version":5}]')]  # the stored events are not in it again
    assert read(m, first + second) == ([1, 2, 3, 4, 5], None)


def test_overlapping_segments_read_as_one_stream():
    # A replay after a crash can cut its segment elsewhere than the first run did.
    m = Meta(version=9)
    segments = Meta().segments(encoded(1, 4)) + Meta().segments(encoded(3, 6)) + Meta().segments(encoded(5, 9))
    assert read(m, segments) == (list(range(1, 10)), None)
    assert read(m, segments, 4, 3) == ([4, 5, 6], 7)


def test_an_entry_written_before_segments_reads_and_appends():
    # Then: full chunks of 32 events keyed by their last version, the newest events in the meta's tail.
    chunk = (32, orjson.dumps([{"version": v} for v in range(1, 33)]))
    m = Meta.from_json({"version": 34, "parked": False, "tail": [{"version": 33}, {"version": 34}]})
    assert read(m, [chunk], 30) == ([30, 31, 32, 33, 34], None)
    m.version = 36
    segments = m.segments(encoded(35, 36))
    assert m.tail == [] and m.to_json() == {"version": 36, "parked": False}
    assert segments == [(36, b'[{"version":33},{"version":34},{"version":35},{"version":36}]')]
    assert read(m, [chunk, *segments], 31) == ([31, 32, 33, 34, 35, 36], None)


# --- admit --------------------------------------------------------------------------------


def test_first_event_of_a_new_aggregate_applies():
    a = admit(Meta(), [opened()])
    assert (a.outcome, versions(a), a.duplicates) == (agg.APPLY, [1], 0)


def test_next_version_applies():
    a = admit(Meta(3), [deposit("acc-1", 4, 1)])
    assert (a.outcome, versions(a), a.duplicates) == ("apply", [4], 0)


def test_composite_from_the_next_version_applies_whole():
    a = admit(Meta(3), deposits(4, 6))
    assert (a.outcome, versions(a), a.duplicates) == ("apply", [4, 5, 6], 0)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_at_or_below_the_last_applied_version_is_a_duplicate(version):
    a = admit(Meta(3), [deposit("acc-1", version, 1)])
    assert (a.outcome, a.events, a.duplicates) == (agg.DUPLICATE, [], 1)
    assert a.outcome == "duplicate"


def test_all_duplicate_composite_counts_every_element():
    a = admit(Meta(5), deposits(2, 4))
    assert (a.outcome, a.events, a.duplicates) == ("duplicate", [], 3)


def test_partially_duplicate_composite_applies_the_new_elements():
    a = admit(Meta(3), deposits(2, 6))
    assert (a.outcome, versions(a), a.duplicates) == ("apply", [4, 5, 6], 2)


@pytest.mark.parametrize("version", [5, 6, 100])
def test_version_above_next_is_a_gap(version):
    a = admit(Meta(3), [deposit("acc-1", version, 1)])
    assert (a.outcome, versions(a), a.duplicates) == (agg.GAP, [version], 0)
    assert a.outcome == "version_gap"


def test_new_aggregate_not_starting_at_one_is_a_gap():
    a = admit(Meta(), [deposit("acc-1", 2, 1)])
    assert a.outcome == "version_gap"


def test_composite_starting_past_the_next_version_is_a_gap():
    a = admit(Meta(2), deposits(4, 5))
    assert (a.outcome, versions(a)) == ("version_gap", [4, 5])


def test_unhandled_event_types_count_for_the_aggregate_version():
    # The index follows the aggregate's stream, whatever the read models handle.
    a = admit(Meta(1), [event("acc-1", 2, "SomethingElse", {})])
    assert (a.outcome, versions(a)) == ("apply", [2])
    assert admit(Meta(1), [event("acc-1", 3, "SomethingElse", {})]).outcome == "version_gap"


def test_newer_event_of_a_parked_aggregate_is_parked():
    a = admit(Meta(3, parked=True), [deposit("acc-1", 4, 1)])
    assert (a.outcome, versions(a), a.duplicates) == (agg.PARKED_REASON, [4], 0)
    assert a.outcome == "parked"
    assert admit(Meta(3, parked=True), [deposit("acc-1", 9, 1)]).outcome == "parked"


@pytest.mark.parametrize("version", [1, 3])
def test_duplicate_is_skipped_even_while_parked(version):
    a = admit(Meta(3, parked=True), [deposit("acc-1", version, 1)])
    assert (a.outcome, a.events, a.duplicates) == ("duplicate", [], 1)


def test_partially_duplicate_composite_of_a_parked_aggregate_parks_only_the_new_elements():
    a = admit(Meta(3, parked=True), deposits(2, 5))
    assert (a.outcome, versions(a), a.duplicates) == ("parked", [4, 5], 2)


def test_admit_does_not_change_meta():
    meta = Meta(3, parked=False)
    admit(meta, deposits(4, 6))
    admit(meta, deposits(9, 9))
    assert meta == Meta(3, False)


@given(
    last=st.integers(min_value=0, max_value=20),
    first=st.integers(min_value=1, max_value=25),
    length=st.integers(min_value=1, max_value=5),
    parked=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_admit_partitions_a_record_into_duplicates_and_fresh_events(last, first, length, parked):
    events = deposits(first, first + length - 1)
    a = admit(Meta(last, parked), events)
    assert a.duplicates + len(a.events) == length
    assert all(e.version <= last for e in events[: a.duplicates])
    assert all(e.version > last for e in a.events)
    if not a.events:
        expected = "duplicate"
    elif parked:
        expected = "parked"
    elif a.events[0].version == last + 1:
        expected = "apply"
    else:
        expected = "version_gap"
    assert a.outcome == expected


def test_prefix_of_one_aggregate_never_covers_an_id_containing_the_separator():
    assert not agg.event_key("a\x00x", 1).startswith(agg.event_prefix("a"))
