"""Engine.plan_build_steps and Engine.shadow: a new read-model version folded from history beside the live one.

A driver folds records live into ``accounts`` (version 1), as the worker
does. The build then folds the same history into ``accounts-v2`` (a fold
that also keeps the last event's type and a count of events); its rows must
equal what a live fold with the new fold would have made of the same
records, an oracle made by a second driver whose ``accounts`` is version 2.
"""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from enginekit import PARTITIONS, Driver, deposited, opened, withdrawn

from projector.core.engine import run_steps
from projector.core.indexes import index_table
from projector.core.partitioning import partition_for

V2 = "accounts-v2"


def fold_v2(fold_v1):
    def fold(state, event):
        value = fold_v1(state, event)
        return {**value, "last_event": event.type, "events": (state or {}).get("events", 0) + 1}
    return fold


def new_version(d: Driver, name: str = V2, fold=None):
    """Version 2 of accounts as a build folds it: into the table ``name``."""
    accounts = next(m for m in d.catalog.models if m.name == "accounts")
    return dataclasses.replace(accounts, name=name, version=2, fold=fold or fold_v2(accounts.fold))


def oracle(records) -> Driver:
    """A live fold with version 2's fold, over the same records."""
    ref = Driver()
    v2 = new_version(ref, name="accounts")
    ref.catalog = dataclasses.replace(ref.catalog, models=[v2 if m.name == "accounts" else m for m in ref.catalog.models])
    ref.engine.models = [v2 if m.name == "accounts" else m for m in ref.engine.models]
    ref.engine.indexed["accounts"] = v2
    for r in records:
        ref.run([r])
    return ref


def build(d: Driver, model, records, chunk: int = 10**9):
    """Fold ``records`` into the new version in plans of ``chunk`` records, applying each; returns the plans."""
    plans = []
    for i in range(0, len(records), chunk):
        plan = run_steps(d.engine.plan_build_steps(model, records[i:i + chunk], every=3))
        d.store.apply(plan)
        plans.append(plan)
    return plans


def rows(d: Driver, table: str) -> dict:
    return d.store.table(table)


def history(d: Driver) -> list:
    return [
        d.record(opened("acc-1", "ann")),
        d.record(opened("acc-2", "bob", "USD")),
        d.record(deposited("acc-1", 2, 100)),
        d.record(deposited("acc-1", 2, 100)),               # a duplicate: applied once
        d.record(withdrawn("acc-2", 2, 50)),                # over the balance: fold_error, not applied
        d.record(deposited("acc-2", 2, 70)),                # version 2 again, applied
        d.record(opened("acc-3", "cy")),
        d.record(deposited("acc-3", 3, 5)),                 # a gap: acc-3 is parked at version 1
        d.record(deposited("acc-3", 4, 5)),                 # parked too
        d.raw(b"acc-9", b"not json"),                       # does not decode
        d.record([deposited("acc-1", 3, 1), withdrawn("acc-1", 4, 2)]),  # a composite record
    ]


@pytest.fixture
def d() -> Driver:
    return Driver()


def test_a_build_folds_what_the_live_fold_applied_and_equals_a_live_fold_of_the_new_version(d):
    records = history(d)
    d.feed(records)
    assert d.meta_state("acc-3") == (1, True)
    v2 = new_version(d)
    build(d, v2, records)
    built = rows(d, V2)
    assert built == rows(oracle(records), "accounts")
    assert built["acc-1"]["version"] == 4 and built["acc-1"]["value"]["events"] == 4
    assert built["acc-2"]["value"]["balance"] == 70
    assert built["acc-3"] == {"version": 1, "value": {**built["acc-3"]["value"], "events": 1}}
    # What the live fold did not apply is not the build's to skip; a record that does not decode is.
    assert d.engine.metrics.build_skipped[V2] == 1
    # The live version is untouched.
    assert {k: r["version"] for k, r in rows(d, "accounts").items()} == {"acc-1": 4, "acc-2": 2, "acc-3": 1}


def test_a_build_in_several_plans_equals_one_in_a_single_plan(d):
    records = history(d)
    d.feed(records)
    build(d, new_version(d), records, chunk=2)
    assert rows(d, V2) == rows(oracle(records), "accounts")


def test_replaying_history_into_a_build_changes_nothing(d):
    records = history(d)
    d.feed(records)
    v2 = new_version(d)
    build(d, v2, records)
    before = d.store.state()
    for plan in build(d, v2, records) + build(d, v2, records[3:], chunk=1):
        assert not any(table in (V2, index_table(V2)) for table, _ in plan.writes), plan.writes
    assert d.store.state() == before


def test_events_the_live_fold_has_not_applied_yet_are_left_for_later(d):
    """The builder reads the topic up to where the live fold is; an event above the index's version waits."""
    first = [d.record(opened("acc-1", "ann"))]
    later = [d.record(deposited("acc-1", 2, 10))]
    d.feed(first)
    v2 = new_version(d)
    build(d, v2, first + later)
    assert rows(d, V2)["acc-1"]["version"] == 1
    d.feed(later)
    build(d, v2, later)
    assert rows(d, V2)["acc-1"] == rows(oracle(first + later), "accounts")["acc-1"]


def test_a_fold_that_raises_in_the_new_version_skips_that_record_only(d):
    records = history(d)
    d.feed(records)
    base = new_version(d).fold

    def picky(state, event):
        if event.aggregate_id == "acc-2" and event.type == "MoneyDeposited":
            raise ValueError("not today")
        return base(state, event)

    build(d, new_version(d, fold=picky), records)
    built = rows(d, V2)
    assert built["acc-2"]["version"] == 1 and built["acc-2"]["value"]["balance"] == 0
    assert built["acc-1"] == rows(oracle(records), "accounts")["acc-1"]
    assert d.engine.metrics.build_skipped[V2] == 2  # the undecodable record, the fold error


def test_a_build_keeps_the_new_versions_own_index_table(d):
    records = history(d)
    d.feed(records)
    v2 = new_version(d)
    assert v2.indexes  # accounts declares INDEXES
    build(d, v2, records)
    live_index = {(p, k) for (t, p, k) in d.store.state() if t == index_table("accounts")}
    built_index = {(p, k) for (t, p, k) in d.store.state() if t == index_table(V2)}
    assert built_index and built_index == live_index
    assert (partition_for(b"acc-1", PARTITIONS), b"owner\0ann\0acc-1") in built_index
    # A row that changes its index value moves its entry in the new version's index.
    close = [d.record(withdrawn("acc-1", 5, 99)), d.record(
        {**deposited("acc-1", 6, 1), "type": "AccountClosed", "data": {}})]
    d.feed(close)
    build(d, v2, close)
    built_index = {k for (t, _, k) in d.store.state() if t == index_table(V2)}
    assert b"status\0closed\0acc-1" in built_index and b"status\0open\0acc-1" not in built_index


def test_a_release_before_the_build_is_built_as_the_live_fold_applied_it(d):
    """History out of order (v1, v3, v2), parked, then released: the live fold applied v2 then v3."""
    records = [d.record(opened("acc-1", "ann")), d.record(deposited("acc-1", 3, 7)),
               d.record(deposited("acc-1", 2, 5))]
    d.feed(records)
    assert d.meta_state("acc-1") == (1, True)
    d.run(commands=[d.release("acc-1")])
    assert d.row("accounts", "acc-1")["version"] == 3 and d.row("accounts", "acc-1")["value"]["balance"] == 12
    build(d, new_version(d), records)
    built = rows(d, V2)["acc-1"]
    assert built["version"] == 3
    assert built["value"]["balance"] == 12 and built["value"]["events"] == 3


def test_a_release_with_skip_to_before_the_build_skips_what_the_live_fold_skipped(d):
    records = [d.record(opened("acc-1", "ann")), d.record(deposited("acc-1", 3, 7)),
               d.record(deposited("acc-1", 5, 11))]
    d.feed(records)
    d.run(commands=[d.release("acc-1", skip_to=5)])
    assert d.row("accounts", "acc-1")["version"] == 5 and d.row("accounts", "acc-1")["value"]["balance"] == 11
    build(d, new_version(d), records)
    built = rows(d, V2)["acc-1"]
    assert (built["version"], built["value"]["balance"], built["value"]["events"]) == (5, 11, 2)


# --- the shadow: a caught-up partition's live batches write the new version too ----------------------


def test_a_shadowed_partition_writes_the_new_version_in_the_live_batch(d):
    v2 = new_version(d)
    p1 = partition_for(b"acc-1", PARTITIONS)
    other = next(aid for aid in (f"acc-{i}" for i in range(2, 50)) if partition_for(aid.encode(), PARTITIONS) != p1)
    d.engine.shadow[p1] = [v2]
    records = [d.record(opened("acc-1", "ann")), d.record(opened(other, "bob")), d.record(deposited("acc-1", 2, 9))]
    d.feed(records)
    built = rows(d, V2)
    assert set(built) == {"acc-1"}  # only the shadowed partition
    assert built["acc-1"] == rows(oracle(records), "accounts")["acc-1"]
    assert d.row("accounts", "acc-1")["value"].get("last_event") is None  # the live version keeps its own fold
    assert {k for (t, _, k) in d.store.state() if t == index_table(V2)} >= {b"owner\0ann\0acc-1"}
    assert d.engine.metrics.events_applied[V2] == 2
    # The builder, replaying that history afterwards, changes nothing.
    before = d.store.state()
    build(d, v2, [r for r in records if r.partition == p1])
    assert d.store.state() == before
    # Once the shadow is gone (the switch), the live batch writes only the live tables.
    d.engine.shadow.clear()
    d.run([d.record(deposited("acc-1", 3, 1))])
    assert rows(d, V2)["acc-1"]["version"] == 2
    assert orjson.loads(orjson.dumps(d.row("accounts", "acc-1")))["version"] == 3


def test_a_record_the_live_fold_dead_lettered_is_not_built_even_if_the_new_fold_takes_it(d):
    """acc-2's version 2 came twice: a withdrawal the live fold refused, then the deposit it applied."""
    records = history(d)
    d.feed(records)

    def lenient(state, event):
        if event.type == "MoneyWithdrawn":  # the new fold would let the balance go below zero
            return {**state, "balance": state["balance"] - event.data["amount"]}
        return next(m for m in d.catalog.models if m.name == "accounts").fold(state, event)

    build(d, new_version(d, fold=lenient), records)
    assert rows(d, V2)["acc-2"] == rows(d, "accounts")["acc-2"]
    assert rows(d, V2)["acc-2"]["value"]["balance"] == 70


def test_a_read_model_of_some_event_types_is_built_from_those_the_live_fold_applied(d):
    records = history(d)
    d.feed(records)
    accounts = next(m for m in d.catalog.models if m.name == "accounts")
    deposits = dataclasses.replace(accounts, name="deposits", handles=frozenset({"MoneyDeposited"}),
                                   fold=lambda state, event: {"n": (state or {}).get("n", 0) + 1}, indexes={})
    build(d, deposits, records, chunk=3)
    assert rows(d, "deposits") == {"acc-1": {"version": 3, "value": {"n": 2}},
                                   "acc-2": {"version": 2, "value": {"n": 1}}}


def test_a_long_history_is_built_across_the_index_segments(d):
    records = [d.record(opened("acc-1", "ann"))] + [d.record(deposited("acc-1", v, v)) for v in range(2, 201)]
    d.feed(records, batch_size=90)  # segments of at most 64 events, some of them split mid-batch
    v2 = new_version(d)
    build(d, v2, records, chunk=7)
    assert rows(d, V2) == rows(oracle(records), "accounts")
    assert rows(d, V2)["acc-1"]["value"]["events"] == 200
