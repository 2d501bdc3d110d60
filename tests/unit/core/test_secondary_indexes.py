"""projector.core.indexes and the engine's upkeep of a read model's secondary indexes (INDEXES)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from enginekit import DEADLETTER, PARTITIONS, Driver, closed, env, headers, opened

from projector.core.catalog import load_catalog
from projector.core.engine import HEADER_ERROR, HEADER_REASON, INDEX, tables_of
from projector.core.indexes import (
    ENTRY,
    MAX_INDEX_VALUE_BYTES,
    BadIndexValue,
    entry_key,
    index_keys,
    index_table,
    is_index_table,
    update_index,
)
from projector.core.partitioning import partition_for

pytestmark = pytest.mark.usefixtures("clean_table_modules")

#: A read model whose indexed fields change: a ticket is assigned, tagged, deleted.
TICKETS = """
NAME = "tickets"
HANDLES = ("Assigned", "Tagged", "Deleted", "Marked")

def fold(state, event):
    state = dict(state or {})
    if event.type == "Assigned":
        state["assignee"] = event.data["to"]
    elif event.type == "Tagged":
        state["tags"] = event.data["tags"]
    elif event.type == "Marked":
        state["mark"] = event.data["mark"]
    elif event.type == "Deleted":
        return None
    return state

def by_assignee(value):
    return value.get("assignee")

def by_tag(value):
    return value.get("tags", [])

def by_mark(value):
    mark = value.get("mark")
    if mark == "raise":
        raise KeyError("no such mark")
    if mark == "number":
        return 5
    if mark == "tuple":
        return ("a", "b")
    if mark == "mixed":
        return ["a", 1]
    return mark

INDEXES = {"assignee": by_assignee, "tag": by_tag, "mark": by_mark}
"""


@pytest.fixture
def catalog(tmp_path: Path):
    folder = tmp_path / "tickets_tables"
    folder.mkdir()
    (folder / "tickets.py").write_text(textwrap.dedent(TICKETS))
    return load_catalog(folder)


@pytest.fixture
def model(catalog):
    return catalog.get("tickets")


@pytest.fixture
def d(catalog) -> Driver:
    return Driver(catalog, repartition_topics={})


def ev(aid: str, version: int, type_: str, **data) -> dict:
    return env(aid, version, type_, data, aggregate_type="ticket")


def entries(d: Driver, table: str = "tickets") -> dict[str, set[str]]:
    """The index entries as ``{"index\\0value": {row keys}}``, each in the partition of its row."""
    out: dict[str, set[str]] = {}
    for (t, p, k), v in d.store.state().items():
        if t == index_table(table):
            name, value, key = k.split(b"\0", 2)
            assert v == ENTRY
            assert p == partition_for(key, PARTITIONS), "an entry lives in the partition of its row"
            out.setdefault(f"{name.decode()}={value.decode()}", set()).add(key.decode())
    return out


class FakeBatch:
    def __init__(self) -> None:
        self.puts: list[tuple[str, int, bytes, bytes | None]] = []

    def put(self, table, partition, key, value):
        self.puts.append((table, partition, key, value))


# --- the pure functions -------------------------------------------------------------------


def test_index_table_and_entry_keys():
    assert index_table("accounts") == "_accounts_idx"
    assert is_index_table("_accounts_idx") and is_index_table(index_table("accounts_v2"))
    assert not any(is_index_table(n) for n in ("accounts", INDEX, "_commands", "_owners_members", "idx"))
    assert entry_key("owner", "ann", b"acc-1") == b"owner\0ann\0acc-1"


def test_index_keys_of_a_value(model):
    value = {"assignee": "ann", "tags": ["x", "y", "x"], "mark": None}
    assert index_keys(model, b"t1", value) == {b"assignee\0ann\0t1", b"tag\0x\0t1", b"tag\0y\0t1"}
    assert index_keys(model, b"t1", None) == set()
    assert index_keys(model, b"t1", {}) == set()  # None and [] index nothing


def test_values_that_cannot_be_keyed_are_skipped(model):
    # The empty string, a NUL (the entry key's separator) and values over the length limit are not indexed.
    long = "z" * (MAX_INDEX_VALUE_BYTES + 1)
    value = {"assignee": "", "tags": ["ok", "a\0b", "", long, "z" * MAX_INDEX_VALUE_BYTES, "\ud800"]}
    assert index_keys(model, b"t", value) == {b"tag\0ok\0t", b"tag\0" + b"z" * MAX_INDEX_VALUE_BYTES + b"\0t"}


@pytest.mark.parametrize("mark, expected", [
    ("raise", "index 'mark' raised KeyError"),
    ("number", "must return a string, a list of strings or None, got int"),
    ("tuple", "got tuple"),
    ("mixed", "got list"),
])
def test_a_bad_index_function_raises_bad_index_value(model, mark, expected):
    with pytest.raises(BadIndexValue) as info:
        index_keys(model, b"t", {"mark": mark})
    assert expected in str(info.value)
    assert "tickets" in str(info.value)


def test_update_index_deletes_old_entries_and_puts_new_ones_in_the_table_it_is_given(model):
    batch = FakeBatch()
    update_index(batch, "tickets_v7", 3, b"t1", model,
                 {"assignee": "ann", "tags": ["x", "y"]}, {"assignee": "bob", "tags": ["y", "z"]})
    assert sorted(batch.puts) == sorted([
        ("_tickets_v7_idx", 3, b"assignee\0ann\0t1", None),
        ("_tickets_v7_idx", 3, b"tag\0x\0t1", None),
        ("_tickets_v7_idx", 3, b"assignee\0bob\0t1", ENTRY),
        ("_tickets_v7_idx", 3, b"tag\0z\0t1", ENTRY),
    ])  # tag=y is unchanged: not written again


def test_update_index_of_a_new_row_a_deleted_row_and_an_unchanged_one(model):
    batch = FakeBatch()
    update_index(batch, "tickets", 0, b"t1", model, None, {"assignee": "ann"})
    assert batch.puts == [("_tickets_idx", 0, b"assignee\0ann\0t1", ENTRY)]
    batch = FakeBatch()
    update_index(batch, "tickets", 0, b"t1", model, {"assignee": "ann"}, None)
    assert batch.puts == [("_tickets_idx", 0, b"assignee\0ann\0t1", None)]
    batch = FakeBatch()
    update_index(batch, "tickets", 0, b"t1", model, {"assignee": "ann"}, {"assignee": "ann", "other": 1})
    assert batch.puts == []


def test_update_index_with_an_old_value_it_cannot_index_deletes_nothing(model):
    batch = FakeBatch()
    update_index(batch, "tickets", 0, b"t1", model, {"mark": "raise"}, {"assignee": "ann"})
    assert batch.puts == [("_tickets_idx", 0, b"assignee\0ann\0t1", ENTRY)]


def test_a_model_without_indexes_writes_nothing():
    batch = FakeBatch()
    update_index(batch, "plain", 0, b"k", SimpleNamespace(name="plain", indexes={}), None, {"a": 1})
    assert batch.puts == []


# --- the engine -----------------------------------------------------------------------------


def test_the_index_table_is_a_table_of_the_worker(catalog):
    names = [name for name, _ in tables_of(catalog)]
    assert "_tickets_idx" in names
    assert "_accounts_idx" in [name for name, _ in tables_of(load_catalog())]


def test_an_entry_moves_when_the_indexed_field_changes(d):
    d.run([d.record(ev("t1", 1, "Assigned", to="ann")), d.record(ev("t2", 1, "Assigned", to="ann"))])
    assert entries(d) == {"assignee=ann": {"t1", "t2"}}
    d.run([d.record(ev("t1", 2, "Assigned", to="bob"))])
    assert entries(d) == {"assignee=ann": {"t2"}, "assignee=bob": {"t1"}}
    # The old entry is deleted in the same plan that writes the row.
    [plan] = d.plans[-1:]
    p = partition_for(b"t1", PARTITIONS)
    assert plan.writes[("_tickets_idx", p)] == {b"assignee\0ann\0t1": None, b"assignee\0bob\0t1": ENTRY}


def test_several_events_of_one_batch_write_only_the_net_change(d):
    d.run([d.record(ev("t1", 1, "Assigned", to="ann")), d.record(ev("t1", 2, "Assigned", to="bob")),
           d.record(ev("t1", 3, "Tagged", tags=["x", "y"]))])
    assert entries(d) == {"assignee=bob": {"t1"}, "tag=x": {"t1"}, "tag=y": {"t1"}}
    p = partition_for(b"t1", PARTITIONS)
    assert set(d.plans[-1].writes[("_tickets_idx", p)]) == {b"assignee\0bob\0t1", b"tag\0x\0t1", b"tag\0y\0t1"}
    d.run([d.record(ev("t1", 4, "Tagged", tags=["y"]))])
    assert entries(d) == {"assignee=bob": {"t1"}, "tag=y": {"t1"}}


def test_a_deleted_row_leaves_no_entry(d):
    d.run([d.record(ev("t1", 1, "Assigned", to="ann")), d.record(ev("t1", 2, "Tagged", tags=["x"]))])
    assert entries(d) == {"assignee=ann": {"t1"}, "tag=x": {"t1"}}
    d.run([d.record(ev("t1", 3, "Deleted"))])
    assert entries(d) == {}
    assert d.row("tickets", "t1") == {"version": 3, "value": None}


def test_an_unchanged_index_value_writes_no_entry(d):
    d.run([d.record(ev("t1", 1, "Assigned", to="ann"))])
    d.run([d.record(ev("t1", 2, "Marked", mark="m"))])
    p = partition_for(b"t1", PARTITIONS)
    assert d.plans[-1].writes[("_tickets_idx", p)] == {b"mark\0m\0t1": ENTRY}
    d.run([d.record(ev("t1", 3, "Assigned", to="ann"))])
    assert ("_tickets_idx", p) not in d.plans[-1].writes


@pytest.mark.parametrize("mark", ["raise", "number", "mixed"])
def test_a_bad_index_value_is_a_fold_error_and_the_row_does_not_change(d, mark):
    d.run([d.record(ev("t1", 1, "Assigned", to="ann"))])
    before = d.row("tickets", "t1")
    d.run([d.record(ev("t1", 2, "Marked", mark=mark)), d.record(ev("t2", 1, "Assigned", to="bob"))])
    [dead] = d.deadletters
    assert dead.topic == DEADLETTER
    assert headers(dead)[HEADER_REASON] == "fold_error"
    assert "index 'mark'" in headers(dead)[HEADER_ERROR] and "t1" in headers(dead)[HEADER_ERROR]
    assert d.row("tickets", "t1") == before
    assert d.meta_state("t1") == (1, False)
    # The other aggregate goes on; the next event of t1 is a version gap (the rejected one was not applied).
    assert entries(d) == {"assignee=ann": {"t1"}, "assignee=bob": {"t2"}}


def test_index_entries_written_before_their_rows_survive_a_crash_between_the_two(d):
    """The worker sends index entries with the messages, before the rows (runtime/sink.py): a crash
    after the entries and before the rows replays the batch, which writes the same entries again."""
    d.run([d.record(ev("t1", 1, "Assigned", to="ann"))])
    batch = [d.record(ev("t1", 2, "Assigned", to="bob"))]
    plan = d.engine.plan(batch)
    for (table, partition), items in plan.writes.items():
        if table == "_tickets_idx":  # only the entries got through
            d.store.write(table, partition, items, None)
    d.run(batch)  # the replay
    assert entries(d) == {"assignee=bob": {"t1"}}
    assert d.row("tickets", "t1")["value"] == {"assignee": "bob"}


def test_rows_written_before_their_entries_would_lose_them_in_a_crash(d):
    """Why the entries do not go with the rows: a replay that finds a row up to date writes nothing."""
    d.run([d.record(ev("t1", 1, "Assigned", to="ann"))])
    batch = [d.record(ev("t1", 2, "Assigned", to="bob"))]
    plan = d.engine.plan(batch)
    p = partition_for(b"t1", PARTITIONS)
    d.store.write("tickets", p, plan.writes[("tickets", p)], None)  # only the row got through
    d.run(batch)
    assert entries(d) == {"assignee=ann": {"t1"}}, "the stale entry stays: entries must not trail their rows"


def test_the_demo_accounts_index_follows_a_closed_account():
    d = Driver()
    d.run([d.record(opened("acc-1", "ann")), d.record(opened("acc-2", "bob"))])
    assert entries(d, "accounts") == {"owner=ann": {"acc-1"}, "owner=bob": {"acc-2"}, "status=open": {"acc-1", "acc-2"}}
    d.run([d.record(closed("acc-1", 2))])
    assert entries(d, "accounts") == {"owner=ann": {"acc-1"}, "owner=bob": {"acc-2"}, "status=open": {"acc-2"},
                                      "status=closed": {"acc-1"}}
    assert d.row("accounts", "acc-1")["value"]["status"] == "closed"
