"""projector.core.control: the control table (CONTRACT §3), applied record by record by ControlState.

Key UTF-8, value any JSON; a tombstone or a JSON ``null`` deletes; a record that
cannot be applied is counted and skipped, its offset still consumed. No Kafka here:
records are fed straight to :meth:`ControlState.apply`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projector.core.catalog import ControlSetting, load_catalog
from projector.core.control import (
    BUILTIN,
    COMMANDS_ENABLED,
    MAX_KEY_BYTES,
    ControlState,
    check_entry,
    check_key,
    encode_value,
)
from projector.core.errors import ControlError

#: The demo's read models declare accounts.setting(MAX_WITHDRAWAL) (tables/accounts.py, CONTROL).
DECLARED = load_catalog().control_settings
MAX_WITHDRAWAL = "accounts.max_withdrawal"

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def j(value: Any) -> bytes:
    return orjson.dumps(value)


class Recorder:
    """A listener that keeps every (key, old, new) it is called with."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []

    def __call__(self, key: str, old: Any, new: Any) -> None:
        self.events.append((key, old, new))


def state_with_recorder() -> tuple[ControlState, Recorder]:
    s = ControlState()
    rec = Recorder()
    s.subscribe(rec)
    return s, rec


# --- valid values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [True, None, "x"]},
        [1, 2.5, "three", False, None],
        "plain string",
        "",
        0,
        -17,
        2**63 - 1,
        3.25,
        True,
        False,
        {"nested": {"deeper": {"list": [{"k": [1, {"z": None}]}]}}},
        {},
        [],
        "ünïcødé ✓",
    ],
)
def test_apply_stores_any_json_value_as_decoded(value):
    s, rec = state_with_recorder()
    assert s.apply(b"some.key", j(value), 0) is True
    assert dict(s.entries) == {"some.key": value}
    stored = s.entries["some.key"]
    assert type(stored) is type(value)
    assert rec.events == [("some.key", None, value)]
    assert s.offset == 0
    assert s.records == 1
    assert s.invalid == {}


def test_apply_decodes_whitespace_and_unicode_keys():
    s = ControlState()
    assert s.apply("ключ.π".encode("utf-8"), b'  {"x" : [ 1 , 2 ] }  ', 0) is True
    assert dict(s.entries) == {"ключ.π": {"x": [1, 2]}}


def test_entries_is_a_read_only_live_view():
    s = ControlState()
    view = s.entries
    s.apply(b"a", b"1", 0)
    with pytest.raises(TypeError):
        s.entries["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        s.entries["new"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        del s.entries["a"]  # type: ignore[attr-defined]
    assert dict(s.entries) == {"a": 1}
    s.apply(b"b", b'"two"', 1)
    assert view is s.entries
    assert dict(view) == {"a": 1, "b": "two"}


def test_snapshot_is_a_copy_with_the_offset():
    s = ControlState()
    s.apply(b"a", b"[1]", 3)
    assert s.snapshot() == {"offset": -1, "entries": {"a": [1]}}, "offsets 0..2 are missing"
    s.resolve(0, 3)
    snap = s.snapshot()
    assert snap == {"offset": 3, "entries": {"a": [1]}}
    snap["entries"]["b"] = 2
    assert dict(s.entries) == {"a": [1]}


# --- deletes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("delete", [None, b"null", b" null "], ids=["tombstone", "json-null", "json-null-spaced"])
def test_tombstone_and_json_null_delete_the_key(delete):
    s, rec = state_with_recorder()
    s.apply(b"a", b'{"x": 1}', 0)
    s.apply(b"b", b"2", 1)
    assert s.apply(b"a", delete, 2) is True
    assert dict(s.entries) == {"b": 2}
    assert rec.events[-1] == ("a", {"x": 1}, None)
    assert s.offset == 2
    assert s.invalid == {}


@pytest.mark.parametrize("delete", [None, b"null"], ids=["tombstone", "json-null"])
def test_deleting_a_missing_key_returns_false_and_notifies_nobody(delete):
    s, rec = state_with_recorder()
    s.apply(b"b", b"2", 0)
    assert s.apply(b"a", delete, 1) is False
    assert dict(s.entries) == {"b": 2}
    assert rec.events == [("b", None, 2)]
    assert s.offset == 1
    assert s.records == 2
    assert s.invalid == {}


def test_a_deleted_key_can_be_written_again():
    s, rec = state_with_recorder()
    s.apply(b"a", b"1", 0)
    s.apply(b"a", None, 1)
    assert s.apply(b"a", b"1", 2) is True
    assert dict(s.entries) == {"a": 1}
    assert rec.events == [("a", None, 1), ("a", 1, None), ("a", None, 1)]


# --- records that cannot be applied -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [b"{", b"nul", b"", b"{'a': 1}", b"1 2", b"NaN", b"undefined", b"\xff\xfe", b'"unterminated', b"[1,]"],
)
def test_malformed_json_is_counted_skipped_and_keeps_the_previous_value(bad):
    s, rec = state_with_recorder()
    s.apply(b"k", b'{"keep": true}', 0)
    assert s.apply(b"k", bad, 1) is False
    assert dict(s.entries) == {"k": {"keep": True}}
    assert s.invalid == {"invalid_json": 1}
    assert s.offset == 1
    assert s.records == 2
    assert rec.events == [("k", None, {"keep": True})]


def test_malformed_json_for_a_new_key_does_not_create_it():
    s = ControlState()
    assert s.apply(b"k", b"{oops", 0) is False
    assert dict(s.entries) == {}
    assert s.invalid["invalid_json"] == 1


def test_a_record_without_a_key_is_counted_as_no_key():
    s, rec = state_with_recorder()
    assert s.apply(None, b"1", 4) is False
    assert s.apply(None, None, 5) is False
    assert dict(s.entries) == {}
    assert s.invalid == {"no_key": 2}
    assert (s.seen, s.missing) == (5, [(0, 4)])
    assert rec.events == []


@pytest.mark.parametrize(
    "key",
    [
        b"\xff\xfe",
        b"caf\xc3",  # truncated UTF-8
        b"",
        b"a\nb",
        b"tab\there",
        b"nul\x00",
        b"del\x7f",
        b"\x1b[31m",
        b"x" * (MAX_KEY_BYTES + 1),
        "é".encode("utf-8") * (MAX_KEY_BYTES // 2 + 1),
    ],
    ids=["not-utf8", "truncated-utf8", "empty", "newline", "tab", "nul", "del", "escape", "too-long", "too-long-multibyte"],
)
def test_an_unusable_key_is_counted_as_invalid_key(key):
    s, rec = state_with_recorder()
    s.apply(b"other", b"1", 0)
    assert s.apply(key, b"2", 1) is False
    assert dict(s.entries) == {"other": 1}
    assert s.invalid == {"invalid_key": 1}
    assert s.offset == 1
    assert rec.events == [("other", None, 1)]


def test_a_key_of_exactly_max_key_bytes_is_accepted():
    s = ControlState()
    key = "é" * (MAX_KEY_BYTES // 2)  # 2 bytes each
    assert len(key.encode("utf-8")) == MAX_KEY_BYTES
    assert s.apply(key.encode("utf-8"), b"1", 0) is True
    assert dict(s.entries) == {key: 1}
    assert s.invalid == {}


def test_invalid_records_do_not_stop_later_ones():
    s = ControlState()
    s.apply(None, b"1", 0)
    s.apply(b"\xff", b"1", 1)
    s.apply(b"k", b"{", 2)
    assert s.apply(b"k", b"3", 3) is True
    assert dict(s.entries) == {"k": 3}
    assert s.invalid == {"no_key": 1, "invalid_key": 1, "invalid_json": 1}
    assert (s.offset, s.records) == (3, 4)


# --- the declared settings -----------------------------------------------------------------------


def test_projector_has_one_setting_and_the_demo_declares_the_other():
    assert set(BUILTIN) == {COMMANDS_ENABLED} == {"commands.enabled"}
    assert set(DECLARED) == {MAX_WITHDRAWAL}
    assert set(ControlState(DECLARED).settings) == {"commands.enabled", "accounts.max_withdrawal"}


def test_a_read_model_cannot_redeclare_projectors_setting():
    with pytest.raises(ControlError, match="commands.enabled"):
        ControlState({COMMANDS_ENABLED: ControlSetting(COMMANDS_ENABLED, "integer")})


def test_an_undeclared_key_takes_any_value_and_a_declared_one_its_type():
    s = ControlState(DECLARED)
    s.check_entry("anything", {"x": [1]})
    s.check_entry(MAX_WITHDRAWAL, 0)
    s.check_entry(MAX_WITHDRAWAL, None)  # a delete
    with pytest.raises(ControlError, match="must be an integer >= 0"):
        s.check_entry(MAX_WITHDRAWAL, -1)
    with pytest.raises(ControlError, match="must be true or false"):
        s.check_entry(COMMANDS_ENABLED, 1)
    ControlState().check_entry(MAX_WITHDRAWAL, -1)  # without the demo's declaration: any value


def test_deciders_see_every_declared_setting_at_its_value_in_force():
    s = ControlState(DECLARED)
    s.apply(b"other", b'"x"', 0)
    s.apply(MAX_WITHDRAWAL.encode(), b"-5", 1)  # invalid: the default (no limit) is in force
    assert dict(s.settings_view()) == {"other": "x", MAX_WITHDRAWAL: None, COMMANDS_ENABLED: True}
    s.apply(MAX_WITHDRAWAL.encode(), b"70", 2)
    s.apply(COMMANDS_ENABLED.encode(), b"false", 3)
    assert dict(s.settings_view()) == {"other": "x", MAX_WITHDRAWAL: 70, COMMANDS_ENABLED: False}


def test_defaults_with_an_empty_table():
    s = ControlState(DECLARED)
    assert s.commands_enabled is True
    assert s.setting(MAX_WITHDRAWAL) is None


@pytest.mark.parametrize("bad", ["x", "false", "true", 0, 1, [False], {"enabled": False}])
def test_a_wrongly_typed_commands_enabled_is_kept_but_falls_back_to_true(bad):
    s = ControlState(DECLARED)
    assert s.apply(COMMANDS_ENABLED.encode(), j(bad), 0) is True
    assert s.entries[COMMANDS_ENABLED] == bad
    assert s.invalid == {"invalid_setting": 1}
    assert s.commands_enabled is True


@pytest.mark.parametrize("bad", [-1, 1.5, 500.0, True, False, "500", [500], {"max": 1}])
def test_a_wrongly_typed_max_withdrawal_is_kept_but_falls_back_to_no_limit(bad):
    s = ControlState(DECLARED)
    assert s.apply(MAX_WITHDRAWAL.encode(), j(bad), 0) is True
    assert s.entries[MAX_WITHDRAWAL] == bad
    assert type(s.entries[MAX_WITHDRAWAL]) is type(bad)
    assert s.invalid == {"invalid_setting": 1}
    assert s.setting(MAX_WITHDRAWAL) is None


def test_valid_builtin_values_take_effect_and_a_delete_restores_the_default():
    s = ControlState(DECLARED)
    s.apply(COMMANDS_ENABLED.encode(), b"false", 0)
    assert s.commands_enabled is False
    s.apply(COMMANDS_ENABLED.encode(), b"true", 1)
    assert s.commands_enabled is True
    s.apply(COMMANDS_ENABLED.encode(), b"false", 2)
    s.apply(COMMANDS_ENABLED.encode(), None, 3)
    assert s.commands_enabled is True

    s.apply(MAX_WITHDRAWAL.encode(), b"500", 4)
    assert s.setting(MAX_WITHDRAWAL) == 500
    s.apply(MAX_WITHDRAWAL.encode(), b"0", 5)
    assert s.setting(MAX_WITHDRAWAL) == 0
    assert s.setting(MAX_WITHDRAWAL) is not None
    s.apply(MAX_WITHDRAWAL.encode(), b"null", 6)
    assert s.setting(MAX_WITHDRAWAL) is None
    assert MAX_WITHDRAWAL not in s.entries
    assert s.invalid == {}


def test_a_bad_setting_then_a_good_one_recovers():
    s = ControlState(DECLARED)
    s.apply(MAX_WITHDRAWAL.encode(), b"-1", 0)
    assert s.setting(MAX_WITHDRAWAL) is None
    s.apply(MAX_WITHDRAWAL.encode(), b"250", 1)
    assert s.setting(MAX_WITHDRAWAL) == 250
    s.apply(COMMANDS_ENABLED.encode(), b'"no"', 2)
    assert s.commands_enabled is True
    s.apply(COMMANDS_ENABLED.encode(), b"false", 3)
    assert s.commands_enabled is False
    assert s.invalid == {"invalid_setting": 2}


def test_a_malformed_builtin_value_keeps_the_previous_setting():
    s = ControlState(DECLARED)
    s.apply(MAX_WITHDRAWAL.encode(), b"300", 0)
    s.apply(MAX_WITHDRAWAL.encode(), b"30O", 1)  # a typo: not JSON
    assert s.setting(MAX_WITHDRAWAL) == 300
    assert s.invalid == {"invalid_json": 1}


# --- offsets -----------------------------------------------------------------------------------


def test_offset_starts_at_minus_one_and_follows_applied_records():
    s = ControlState(DECLARED)
    assert (s.offset, s.records) == (-1, 0)
    s.apply(b"a", b"1", 0)
    assert s.offset == 0
    s.apply(b"a", b"1", 7)  # same value: no change, but the offset is consumed
    assert (s.offset, s.seen, s.records, s.missing) == (0, 7, 2, [(1, 7)])
    s.resolve(1, 7)  # read again and found empty (compaction)
    assert (s.offset, s.missing) == (7, [])


@pytest.mark.parametrize("replayed", [3, 5])
def test_a_record_at_or_below_the_offset_is_skipped(replayed):
    s, rec = state_with_recorder()
    assert s.apply(b"a", b"1", 5) is True
    s.resolve(0, 5)
    assert s.apply(b"a", b"2", replayed) is False
    assert s.apply(b"b", b"2", replayed) is False
    assert s.apply(b"a", None, replayed) is False
    assert s.apply(None, b"{", replayed) is False
    assert dict(s.entries) == {"a": 1}
    assert (s.offset, s.records) == (5, 1)
    assert s.invalid == {}
    assert rec.events == [("a", None, 1)]


# --- caught_up ---------------------------------------------------------------------------------


def test_not_caught_up_while_the_target_is_unknown():
    s = ControlState(DECLARED)
    assert s.caught_up is False
    s.apply(b"a", b"1", 0)
    s.apply(b"a", b"2", 100)
    assert s.target is None
    assert s.caught_up is False


def test_target_zero_is_caught_up_at_once():
    s = ControlState(DECLARED)
    s.target = 0
    assert s.caught_up is True


def test_caught_up_once_offset_plus_one_reaches_the_target():
    s = ControlState(DECLARED)
    s.target = 3
    assert s.caught_up is False
    s.apply(b"a", b"1", 0)
    s.apply(b"a", b"2", 1)
    assert s.caught_up is False
    s.apply(b"a", b"{", 2)  # even an invalid record counts as read
    assert s.caught_up is True
    s.apply(b"a", b"3", 3)
    assert s.caught_up is True


def test_caught_up_when_offsets_jump_past_the_target():
    s = ControlState(DECLARED)
    s.target = 10  # compaction removed offsets 0..8
    s.apply(b"a", b"1", 9)
    assert s.caught_up is False, "0..8 may hold records not delivered yet"
    s.resolve(0, 9)
    assert s.caught_up is True


# --- listeners ----------------------------------------------------------------------------------


def test_listeners_see_insert_update_and_delete():
    s, rec = state_with_recorder()
    s.apply(b"a", b"1", 0)
    s.apply(b"a", b'{"x": [1]}', 1)
    s.apply(b"a", None, 2)
    assert rec.events == [("a", None, 1), ("a", 1, {"x": [1]}), ("a", {"x": [1]}, None)]


def test_writing_the_same_value_again_notifies_nobody():
    s, rec = state_with_recorder()
    assert s.apply(b"a", b'{"x": [1, "y"]}', 0) is True
    assert s.apply(b"a", b'{ "x" : [1,"y"] }', 1) is False
    assert s.apply(b"b", b"false", 2) is True
    assert s.apply(b"b", b"false", 3) is False
    assert rec.events == [("a", None, {"x": [1, "y"]}), ("b", None, False)]
    assert s.offset == 3


def test_a_change_of_json_type_is_a_change_even_when_python_says_equal():
    s, rec = state_with_recorder()
    s.apply(b"n", b"1", 0)
    assert s.apply(b"n", b"1.0", 1) is True
    assert s.apply(b"n", b"true", 2) is True
    assert s.apply(b"n", b"1", 3) is True
    assert s.apply(b"z", b"0", 4) is True
    assert s.apply(b"z", b"false", 5) is True
    assert rec.events == [("n", None, 1), ("n", 1, 1.0), ("n", 1.0, True), ("n", True, 1), ("z", None, 0), ("z", 0, False)]
    assert [type(e[2]) for e in rec.events] == [int, float, bool, int, int, bool]
    assert s.entries["z"] is False


@pytest.mark.parametrize(
    "before, after",
    [([1], [True]), ({"a": 1}, {"a": 1.0}), ({"a": [0]}, {"a": [False]})],
)
def test_a_nested_json_type_change_is_applied(before, after):
    s, rec = state_with_recorder()
    s.apply(b"k", j(before), 0)
    changed = s.apply(b"k", j(after), 1)
    assert j(s.entries["k"]) == j(after)
    assert changed is True
    assert rec.events[-1] == ("k", before, after)


def test_unsubscribe_stops_notifications_and_is_idempotent():
    s = ControlState(DECLARED)
    first, second = Recorder(), Recorder()
    unsub_first = s.subscribe(first)
    s.subscribe(second)
    s.apply(b"a", b"1", 0)
    unsub_first()
    unsub_first()  # a second call is harmless
    s.apply(b"a", b"2", 1)
    assert first.events == [("a", None, 1)]
    assert second.events == [("a", None, 1), ("a", 1, 2)]


def test_listeners_are_called_in_subscription_order():
    s = ControlState(DECLARED)
    calls: list[str] = []
    s.subscribe(lambda k, o, n: calls.append("one"))
    s.subscribe(lambda k, o, n: calls.append("two"))
    s.apply(b"a", b"1", 0)
    assert calls == ["one", "two"]


def test_a_failing_listener_is_counted_and_the_others_still_run():
    s = ControlState(DECLARED)

    def boom(key, old, new):
        raise RuntimeError(f"listener broke on {key}")

    before, after = Recorder(), Recorder()
    s.subscribe(before)
    s.subscribe(boom)
    s.subscribe(after)
    assert s.apply(b"a", b"1", 0) is True
    assert s.apply(b"a", None, 1) is True
    assert s.listener_errors == 2
    assert before.events == after.events == [("a", None, 1), ("a", 1, None)]
    assert dict(s.entries) == {}
    assert s.offset == 1
    assert s.invalid == {}


def test_a_listener_sees_the_table_already_changed():
    s = ControlState(DECLARED)
    seen: list[dict] = []
    s.subscribe(lambda k, o, n: seen.append(dict(s.entries)))
    s.apply(b"a", b"1", 0)
    s.apply(b"a", None, 1)
    assert seen == [{"a": 1}, {}]


# --- wait_for_offset ---------------------------------------------------------------------------


def test_wait_for_an_applied_offset_returns_true_at_once():
    s = ControlState(DECLARED)
    s.apply(b"a", b"1", 4)
    s.resolve(0, 4)

    async def main() -> tuple[bool, bool, bool]:
        return (
            await s.wait_for_offset(4, 0),
            await s.wait_for_offset(2, 0.5),
            await s.wait_for_offset(-1, 0),
        )

    assert asyncio.run(main()) == (True, True, True)


def test_wait_wakes_when_another_task_applies_the_record():
    s = ControlState(DECLARED)

    async def writer() -> None:
        await asyncio.sleep(0.02)
        s.apply(b"a", b"1", 0)
        await asyncio.sleep(0.02)
        s.apply(b"a", b"2", 1)

    async def main() -> tuple[bool, float, dict]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = asyncio.create_task(writer())
        ok = await s.wait_for_offset(1, 0.5)
        elapsed = loop.time() - start
        snapshot = dict(s.entries)
        await task
        return ok, elapsed, snapshot

    ok, elapsed, snapshot = asyncio.run(main())
    assert ok is True
    assert elapsed < 0.45
    assert snapshot == {"a": 2}


def test_an_invalid_record_at_the_offset_also_ends_the_wait():
    s = ControlState(DECLARED)

    async def main() -> bool:
        async def writer() -> None:
            await asyncio.sleep(0.01)
            s.apply(b"a", b"{nope", 0)

        task = asyncio.create_task(writer())
        ok = await s.wait_for_offset(0, 0.5)
        await task
        return ok

    assert asyncio.run(main()) is True
    assert s.invalid == {"invalid_json": 1}


def test_every_waiter_is_woken():
    s = ControlState(DECLARED)

    async def main() -> list[bool]:
        async def writer() -> None:
            await asyncio.sleep(0.02)
            s.apply(b"a", b"1", 0)

        task = asyncio.create_task(writer())
        results = await asyncio.gather(s.wait_for_offset(0, 0.5), s.wait_for_offset(0, 0.5), s.wait_for_offset(1, 0.1))
        await task
        return results

    assert asyncio.run(main()) == [True, True, False]


def test_wait_times_out_when_nothing_arrives():
    s = ControlState(DECLARED)

    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ok = await s.wait_for_offset(0, 0.05)
        return ok, loop.time() - start

    ok, elapsed = asyncio.run(main())
    assert ok is False
    assert 0.04 <= elapsed < 0.5


def test_wait_times_out_when_only_earlier_records_arrive():
    s = ControlState(DECLARED)

    async def main() -> bool:
        async def writer() -> None:
            await asyncio.sleep(0.01)
            s.apply(b"a", b"1", 0)
            await asyncio.sleep(0.01)
            s.apply(b"a", b"2", 1)

        task = asyncio.create_task(writer())
        ok = await s.wait_for_offset(2, 0.15)
        await task
        return ok

    assert asyncio.run(main()) is False
    assert s.offset == 1


def test_a_timed_out_wait_does_not_break_a_wait_in_a_later_event_loop():
    s = ControlState(DECLARED)
    assert asyncio.run(s.wait_for_offset(0, 0.01)) is False
    assert asyncio.run(s.wait_for_offset(0, 0.01)) is False


# --- check_key and check_entry -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["a", "commands.enabled", "accounts.max_withdrawal", "with space", "ключ/π", "x" * MAX_KEY_BYTES,
     "é" * (MAX_KEY_BYTES // 2)],
)
def test_check_key_accepts_and_returns_usable_keys(key):
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key, words",
    [
        ("", "non-empty"),
        (None, "non-empty"),
        (b"bytes", "non-empty"),
        (42, "non-empty"),
        ("x" * (MAX_KEY_BYTES + 1), f"longer than {MAX_KEY_BYTES} bytes"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), f"longer than {MAX_KEY_BYTES} bytes"),
        ("line\nbreak", "control character"),
        ("\x00", "control character"),
        ("a\tb", "control character"),
        ("del\x7f", "control character"),
        ("\x1f", "control character"),
        ("a\x85b", "control character"),
        ("a\u2028b", "line separator"),
    ],
)
def test_check_key_refuses_unusable_keys(key, words):
    with pytest.raises(ControlError) as info:
        check_key(key)
    assert words in str(info.value)
    assert "control key" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "key, value",
    [
        (COMMANDS_ENABLED, True),
        (COMMANDS_ENABLED, False),
        (COMMANDS_ENABLED, None),
        (MAX_WITHDRAWAL, 0),
        (MAX_WITHDRAWAL, 500),
        (MAX_WITHDRAWAL, 2**62),
        (MAX_WITHDRAWAL, None),
        ("feature.x", "anything"),
        ("feature.x", -1),
        ("feature.x", 1.5),
        ("feature.x", {"nested": [1, None, {"a": False}]}),
        ("feature.x", []),
        ("feature.x", None),
    ],
)
def test_check_entry_accepts(key, value):
    assert check_entry(key, value) is None


@pytest.mark.parametrize(
    "key, value, shown",
    [
        (COMMANDS_ENABLED, "x", '"x"'),
        (COMMANDS_ENABLED, "false", '"false"'),
        (COMMANDS_ENABLED, 0, "0"),
        (COMMANDS_ENABLED, 1, "1"),
        (COMMANDS_ENABLED, [True], "[true]"),
        (MAX_WITHDRAWAL, -1, "-1"),
        (MAX_WITHDRAWAL, 1.5, "1.5"),
        (MAX_WITHDRAWAL, 500.0, "500.0"),
        (MAX_WITHDRAWAL, True, "true"),
        (MAX_WITHDRAWAL, False, "false"),
        (MAX_WITHDRAWAL, "500", '"500"'),
        (MAX_WITHDRAWAL, {"max": 5}, '{"max":5}'),
    ],
)
def test_check_entry_refuses_wrongly_typed_setting_values(key, value, shown):
    with pytest.raises(ControlError) as info:
        check_entry(key, value, ControlState(DECLARED).settings)
    message = str(info.value)
    assert message.startswith(f"{key} must be ")
    assert message.endswith(f"got {shown}")


def test_check_entry_refuses_a_bad_key_whatever_the_value():
    for value in (None, 1, "x"):
        with pytest.raises(ControlError, match="control character"):
            check_entry("bad\nkey", value)
        with pytest.raises(ControlError, match="non-empty"):
            check_entry("", value)


def test_check_entry_agrees_with_what_apply_counts_as_invalid_setting():
    values = [True, False, 0, 1, -1, 1.5, "x", None, [1], {"a": 1}, 10**6]
    for key in (COMMANDS_ENABLED, MAX_WITHDRAWAL):
        for value in values:
            s = ControlState(DECLARED)
            s.apply(key.encode(), j(value), 0)
            try:
                check_entry(key, value, ControlState(DECLARED).settings)
                refused = False
            except ControlError:
                refused = True
            assert refused == (s.invalid["invalid_setting"] == 1), (key, value)


# --- encode_value ----------------------------------------------------------------------------------


def test_encode_value_of_none_is_a_tombstone():
    assert encode_value(None) is None


@pytest.mark.parametrize("value, raw", [(False, b"false"), (0, b"0"), ("", b'""'), ({"a": [1, None]}, b'{"a":[1,null]}')])
def test_encode_value_is_compact_json(value, raw):
    assert encode_value(value) == raw


# --- properties -----------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
KEYS = ["a", "b", "c", COMMANDS_ENABLED]
#: A record's value: a tombstone (None) or the JSON of any value (JSON null included).
record_values = st.one_of(st.none(), json_values.map(orjson.dumps), st.sampled_from([b"true", b"false", b"0", b"null"]))


@st.composite
def logs(draw, values=record_values, keys=st.sampled_from(KEYS)) -> list[tuple[bytes, Optional[bytes], int]]:
    """A control log: (key, value, offset) in increasing offset order, with gaps (compaction leaves them)."""
    items = draw(st.lists(st.tuples(keys, values), max_size=25))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=len(items), max_size=len(items)))
    start = draw(st.integers(min_value=0, max_value=5))
    out, offset = [], start - 1
    for (key, value), gap in zip(items, gaps):
        offset += gap
        out.append((key.encode(), value, offset))
    return out


def apply_all(s: ControlState, log: list[tuple[Optional[bytes], Optional[bytes], int]]) -> list[bool]:
    """Apply a log read through to its end: offsets it skips hold no record (resolved, as the gap filler would)."""
    out = [s.apply(k, v, o) for k, v, o in log]
    s.resolve(0, s.seen + 1)
    return out


def compacted(log: list[tuple[bytes, Optional[bytes], int]], drop_tombstones: bool = False) -> list:
    last: dict[bytes, tuple[bytes, Optional[bytes], int]] = {}
    for record in log:
        last[record[0]] = record
    out = sorted(last.values(), key=lambda r: r[2])
    if drop_tombstones:
        out = [r for r in out if r[1] is not None and orjson.loads(r[1]) is not None]
    return out


def model(log: list[tuple[Optional[bytes], Optional[bytes], int]]) -> dict[str, Any]:
    """Last write wins, None deletes; records that are not valid JSON or lack a usable key are ignored."""
    table: dict[str, Any] = {}
    for key, value, _ in log:
        if key is None:
            continue
        try:
            name = check_key(key.decode("utf-8"))
            new = None if value is None else orjson.loads(value)
        except (UnicodeDecodeError, ControlError, orjson.JSONDecodeError):
            continue
        if new is None:
            table.pop(name, None)
        else:
            table[name] = new
    return table


def strict(value: Any) -> Any:
    """A form of a JSON value where True, 1 and 1.0 differ, at every depth, for comparing type-exactly."""
    if isinstance(value, list):
        return ("list", [strict(v) for v in value])
    if isinstance(value, dict):
        return ("dict", {k: strict(v) for k, v in value.items()})
    return (type(value).__name__, value)


@PROPS
@given(logs(), st.booleans())
def test_property_compacted_log_gives_the_same_entries(log, drop_tombstones):
    full, comp = ControlState(), ControlState()
    apply_all(full, log)
    apply_all(comp, compacted(log, drop_tombstones))
    assert dict(full.entries) == dict(comp.entries)
    assert {k: strict(v) for k, v in full.entries.items()} == {k: strict(v) for k, v in comp.entries.items()}
    assert full.commands_enabled == comp.commands_enabled
    if log and not drop_tombstones:
        assert full.offset == comp.offset == log[-1][2]


@PROPS
@given(logs())
def test_property_entries_equal_last_write_wins_none_deletes(log):
    s = ControlState(DECLARED)
    apply_all(s, log)
    expected = model(log)
    assert dict(s.entries) == expected
    assert {k: strict(v) for k, v in s.entries.items()} == {k: strict(v) for k, v in expected.items()}
    assert s.offset == (log[-1][2] if log else -1)
    assert s.records == len(log)
    assert set(s.invalid) <= {"invalid_setting"}
    enabled = expected.get(COMMANDS_ENABLED, True)
    assert s.commands_enabled is (enabled if isinstance(enabled, bool) else True)


malformed = st.sampled_from([b"{", b"", b"nul", b"[1,", b"\xff", b"'x'"])
noisy_keys = st.sampled_from([*KEYS, "", "bad\nkey"])
noisy_values = st.one_of(record_values, malformed)


@PROPS
@given(logs(values=noisy_values, keys=noisy_keys))
def test_property_invalid_records_are_skipped_and_counted(log):
    s = ControlState(DECLARED)
    apply_all(s, log)
    assert dict(s.entries) == model(log)
    bad_keys = sum(1 for k, _, _ in log if k in (b"", b"bad\nkey"))
    bad_json = 0
    for k, v, _ in log:
        if k in (b"", b"bad\nkey") or v is None:
            continue
        try:
            orjson.loads(v)
        except orjson.JSONDecodeError:
            bad_json += 1
    assert s.invalid["invalid_key"] == bad_keys
    assert s.invalid["invalid_json"] == bad_json
    assert s.records == len(log)


@PROPS
@given(logs(), st.data())
def test_property_replaying_a_prefix_changes_nothing(log, data):
    s, rec = state_with_recorder()
    apply_all(s, log)
    before = (dict(s.entries), s.offset, s.records, dict(s.invalid), len(rec.events))
    prefix = log[: data.draw(st.integers(min_value=0, max_value=len(log)))]
    assert apply_all(s, prefix) == [False] * len(prefix)
    assert apply_all(s, log) == [False] * len(log)
    assert (dict(s.entries), s.offset, s.records, dict(s.invalid), len(rec.events)) == before


@PROPS
@given(logs())
def test_property_listener_events_rebuild_the_entries(log):
    s, rec = state_with_recorder()
    changed = apply_all(s, log)
    assert len(rec.events) == sum(changed)
    rebuilt: dict[str, Any] = {}
    for key, old, new in rec.events:
        assert rebuilt.get(key) == old
        assert strict(old) != strict(new)  # a change, types included ([0] is not [False])
        if new is None:
            del rebuilt[key]
        else:
            rebuilt[key] = new
    assert rebuilt == dict(s.entries)
    assert {k: strict(v) for k, v in rebuilt.items()} == {k: strict(v) for k, v in s.entries.items()}


@PROPS
@given(json_values)
def test_property_encode_value_round_trips(value):
    raw = encode_value(value)
    if value is None:
        assert raw is None
        return
    assert isinstance(raw, bytes)
    assert orjson.loads(raw) == value
    s = ControlState(DECLARED)
    s.apply(b"k", raw, 0)
    assert s.entries["k"] == value


# --- records out of order, and missing ones filled in ----------------------------------------------


def test_a_missing_record_holds_the_offset_back_until_it_is_filled():
    s, rec = state_with_recorder()
    s.apply(b"a", b"1", 0)
    s.apply(b"a", b"3", 2)  # offset 1 was not delivered
    assert (s.offset, s.missing, s.entries["a"]) == (0, [(1, 2)], 3)
    assert s.apply(b"b", b"2", 1) is True  # re-read later
    assert (s.offset, s.missing, s.filled, s.records) == (2, [], 1, 3)
    assert s.apply(b"b", b"2", 1) is False  # and only once
    assert dict(s.entries) == {"a": 3, "b": 2}


def test_a_late_older_record_never_overwrites_a_newer_one():
    s, rec = state_with_recorder()
    s.apply(b"a", b"1", 0)
    s.apply(b"a", b"3", 5)
    assert s.apply(b"a", b"2", 3) is False  # older than the value applied
    assert s.apply(b"a", None, 4) is False  # an older delete too
    assert s.entries["a"] == 3
    assert s.missing == [(1, 3)], "offsets 3 and 4 are accounted for"
    assert rec.events == [("a", None, 1), ("a", 1, 3)]


def test_note_end_marks_the_unseen_tail_missing():
    s = ControlState(DECLARED)
    s.apply(b"a", b"1", 0)
    s.note_end(4)
    assert (s.seen, s.offset, s.missing) == (3, 0, [(1, 4)])
    s.note_end(2)  # nothing new
    assert s.missing == [(1, 4)]
    s.apply(b"b", b"1", 2)
    s.resolve(1, 4)
    assert (s.offset, s.missing, dict(s.entries)) == (3, [], {"a": 1, "b": 1})


@PROPS
@given(logs(), st.randoms(use_true_random=False))
def test_property_any_delivery_order_gives_the_in_order_table(log, rnd):
    """Records delivered in any order, with repeats, give the table of the log applied in order."""
    in_order = ControlState()
    apply_all(in_order, log)
    shuffled = list(log) + [r for r in log if rnd.random() < 0.3]
    rnd.shuffle(shuffled)
    s = ControlState(DECLARED)
    apply_all(s, shuffled)
    assert dict(s.entries) == dict(in_order.entries)
    assert {k: strict(v) for k, v in s.entries.items()} == {k: strict(v) for k, v in in_order.entries.items()}
    assert s.records == len(log) and s.offset == in_order.offset


@PROPS
@given(logs(), st.data())
def test_property_dropped_records_are_found_by_rereading_the_missing_ranges(log, data):
    """Drop any records on the way; re-reading what is missing from the log gives the full table."""
    dropped = set(data.draw(st.sets(st.sampled_from(range(len(log))))) if log else set())
    s = ControlState(DECLARED)
    for i, (k, v, o) in enumerate(log):
        if i not in dropped:
            s.apply(k, v, o)
    if log:
        s.note_end(log[-1][2] + 1)
    for start, end in s.missing:  # what the gap filler does: read each range from the topic
        for k, v, o in log:
            if start <= o < end:
                s.apply(k, v, o)
        s.resolve(start, end)
    expected = ControlState()
    apply_all(expected, log)
    assert dict(s.entries) == dict(expected.entries)
    assert (s.offset, s.records, s.missing) == (expected.offset, len(log), [])
