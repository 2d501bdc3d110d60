"""projector.core.engine.Engine over an in-memory Store: dead letters, parking, release, composites, the index.

Records go through ``Engine.plan``; its writes are applied to the store the
way the worker applies them once Kafka has acked, and its repartition sends
are fed back to ``Engine.plan_derived`` (see enginekit.py).
"""

from __future__ import annotations

import orjson
import pytest
from enginekit import (
    COMMANDS,
    DEADLETTER,
    PARTITIONS,
    REPARTITION,
    Driver,
    closed,
    deposited,
    env,
    group_by,
    headers,
    opened,
    values,
    withdrawn,
)

from projector.core.engine import HEADER_ERROR, HEADER_REASON, HEADER_SOURCE, INDEX, members_table
from projector.core.index import parked_aggregates
from projector.core.partitioning import partition_for


@pytest.fixture
def d() -> Driver:
    return Driver()


def balance(d: Driver, aid: str) -> int:
    return d.row("accounts", aid)["value"]["balance"]


def reasons(d: Driver) -> list[str]:
    return [headers(s)[HEADER_REASON] for s in d.deadletters]


def open_with(d: Driver, aid: str, amount: int, owner: str = "alice", currency: str = "EUR") -> None:
    d.run([d.record(opened(aid, owner, currency)), d.record(deposited(aid, 2, amount))])


# --- the plain path ---------------------------------------------------------------------------


def test_records_fold_into_accounts_owners_currencies_and_the_index(d):
    d.run([
        d.record(opened("acc-1", "ann", "EUR")),
        d.record(opened("acc-2", "ann", "USD")),
        d.record(deposited("acc-1", 2, 100)),
        d.record(deposited("acc-2", 2, 40)),
        d.record(withdrawn("acc-1", 3, 30)),
    ])
    assert d.row("accounts", "acc-1") == {
        "version": 3,
        "value": {"owner": "ann", "currency": "EUR", "balance": 70, "status": "open", "deposits": 1, "withdrawals": 1},
    }
    assert d.row("owners", "ann")["value"] == {"accounts": 2, "open_accounts": 2, "balance": 110}
    assert d.row("currencies", "EUR")["value"] == {"accounts": 1, "open_accounts": 1, "balance": 70}
    assert d.row("currencies", "USD")["value"] == {"accounts": 1, "open_accounts": 1, "balance": 40}
    assert d.meta_state("acc-1") == (3, False)
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, 2, 3]
    assert d.deadletters == []
    assert d.engine.metrics.events_applied["accounts"] == 5


def test_rows_are_stored_in_the_partition_of_their_key(d):
    open_with(d, "acc-1", 10, owner="bob", currency="GBP")
    for table, key in [("accounts", "acc-1"), ("owners", "bob"), ("currencies", "GBP"), (INDEX, None)]:
        k = key if key is not None else "acc-1"
        p = partition_for(k.encode(), PARTITIONS)
        slots = [part for (t, part), rows in d.store.data.items() if t == table and rows]
        assert slots == [p], table
    assert d.store.get(members_table(d.catalog.get("owners")), partition_for(b"bob", PARTITIONS), b"bob\x00acc-1")


def test_repartition_sends_are_keyed_by_group_in_the_group_partition(d):
    plan = d.run([d.record(opened("acc-1", "ann", "CHF"))], derived=False)
    sends = {(s.topic, s.key): s for s in plan.sends}
    assert set(sends) == {(REPARTITION["owners"], b"ann"), (REPARTITION["currencies"], b"CHF")}
    assert sends[(REPARTITION["owners"], b"ann")].partition == partition_for(b"ann", PARTITIONS)
    assert orjson.loads(sends[(REPARTITION["owners"], b"ann")].value) == {"changes": [
        {"aggregate_id": "acc-1", "version": 1, "contribution": {"accounts": 1, "open_accounts": 1, "balance": 0}},
    ]}


def test_one_write_per_key_and_one_repartition_message_per_group_per_batch(d):
    recs = [d.record(opened("acc-1"))] + [d.record(deposited("acc-1", v, 5)) for v in range(2, 7)]
    plan = d.run(recs, derived=False)
    p = partition_for(b"acc-1", PARTITIONS)
    assert list(plan.writes[("accounts", p)]) == [b"acc-1"]
    owner_msgs = [s for s in plan.sends if s.topic == REPARTITION["owners"]]
    assert len(owner_msgs) == 1
    [change] = orjson.loads(owner_msgs[0].value)["changes"]
    assert change["version"] == 6
    assert change["contribution"]["balance"] == 25


def test_one_repartition_message_per_group_carries_every_member_change(d):
    recs = [d.record(opened("acc-1", "ann")), d.record(opened("acc-2", "ann")), d.record(opened("acc-3", "bob"))]
    plan = d.run(recs, derived=False)
    owner_msgs = {s.key: orjson.loads(s.value)["changes"] for s in plan.sends if s.topic == REPARTITION["owners"]}
    assert sorted(owner_msgs) == [b"ann", b"bob"]
    assert sorted(c["aggregate_id"] for c in owner_msgs[b"ann"]) == ["acc-1", "acc-2"]
    assert [c["aggregate_id"] for c in owner_msgs[b"bob"]] == ["acc-3"]



def test_duplicate_record_changes_nothing_and_is_counted(d):
    first = d.record(opened("acc-1"))
    d.run([first, d.record(deposited("acc-1", 2, 10))])
    before = d.store.state()
    plan = d.run([d.record(opened("acc-1")), d.record(deposited("acc-1", 2, 99999))])
    assert not plan
    assert d.store.state() == before
    assert d.engine.metrics.duplicates == 2
    assert d.deadletters == []


def test_closing_an_account_keeps_it_in_the_owner_count(d):
    open_with(d, "acc-1", 10)
    open_with(d, "acc-2", 5)
    d.run([d.record(withdrawn("acc-1", 3, 10)), d.record(closed("acc-1", 4))])
    assert d.row("owners", "alice")["value"] == {"accounts": 2, "open_accounts": 1, "balance": 5}
    assert d.row("accounts", "acc-1")["value"]["status"] == "closed"


# --- dead letters -------------------------------------------------------------------------------


def assert_one_deadletter(d: Driver, rec, reason: str, *error_parts: str) -> None:
    assert len(d.deadletters) == 1, reasons(d)
    [send] = d.deadletters
    h = headers(send)
    assert send.topic == DEADLETTER
    assert (send.key, send.value) == (rec.key, rec.value), "a dead letter keeps the original key and value bytes"
    assert h[HEADER_REASON] == reason
    assert h[HEADER_SOURCE] == f"events/{rec.partition}/{rec.offset}"
    assert h[HEADER_ERROR]
    for part in error_parts:
        assert part in h[HEADER_ERROR]
    assert d.engine.metrics.deadletters[reason] == 1


@pytest.mark.parametrize("value", [b"", None, b"{not json", b"\xff\xfe", b'{"id": "x"'])
def test_undecodable_value_is_invalid_json(d, value):
    rec = d.raw(b"acc-1", value)
    d.run([rec])
    assert_one_deadletter(d, rec, "invalid_json")
    assert d.row("accounts", "acc-1") is None


@pytest.mark.parametrize(
    "value",
    [b"5", b'"text"', b"null", b"[]", b"[1, 2]", b"{}",
     orjson.dumps({k: v for k, v in opened("acc-1").items() if k != "type"}),
     orjson.dumps({**opened("acc-1"), "version": 0}),
     orjson.dumps({**opened("acc-1"), "data": []})],
    ids=["number", "string", "null", "empty-array", "array-of-numbers", "empty-object", "no-type", "version-0",
         "data-array"],
)
def test_ill_formed_envelope_is_invalid_envelope(d, value):
    rec = d.raw(b"acc-1", value)
    d.run([rec])
    assert_one_deadletter(d, rec, "invalid_envelope")
    assert d.row("accounts", "acc-1") is None
    assert d.meta_state("acc-1") == (0, False)


def test_schema_version_newer_than_the_catalog_knows_is_invalid_envelope(d):
    open_with(d, "acc-1", 10)
    rec = d.record(env("acc-1", 3, "MoneyDeposited", {"amount": 5}, schema_version=2))
    d.run([rec])
    assert_one_deadletter(d, rec, "invalid_envelope", "schema_version 2")
    assert d.meta("acc-1").version == 2


def test_key_other_than_the_aggregate_id_is_key_mismatch(d):
    rec = d.record(opened("acc-1"), key="acc-2")
    d.run([rec])
    assert_one_deadletter(d, rec, "key_mismatch", "acc-1", "acc-2")
    assert d.row("accounts", "acc-1") is None and d.row("accounts", "acc-2") is None


def test_missing_key_is_key_mismatch(d):
    rec = d.raw(None, orjson.dumps(opened("acc-1")))
    d.run([rec])
    assert_one_deadletter(d, rec, "key_mismatch")


def test_version_gap_parks_the_aggregate(d):
    open_with(d, "acc-1", 10)
    rec = d.record(deposited("acc-1", 4, 5))
    d.run([rec])
    assert_one_deadletter(d, rec, "version_gap", "expected version 3", "got 4")
    assert d.meta_state("acc-1") == (2, True)
    assert balance(d, "acc-1") == 10
    assert [p["events"][0]["version"] for p in d.parked("acc-1")] == [4]
    assert d.engine.metrics.parked_aggregates == 1


def test_later_events_of_a_parked_aggregate_are_parked(d):
    open_with(d, "acc-1", 10)
    d.run([d.record(deposited("acc-1", 4, 5))])
    rec = d.record(deposited("acc-1", 5, 5))
    d.deadletters.clear()
    d.engine.metrics.deadletters.clear()
    d.run([rec])
    assert_one_deadletter(d, rec, "parked", "acc-1")
    assert [p["events"][0]["version"] for p in d.parked("acc-1")] == [4, 5]
    assert d.parked("acc-1")[1]["source"] == f"events/{rec.partition}/{rec.offset}"


def test_duplicate_of_a_parked_aggregate_is_skipped_not_parked(d):
    open_with(d, "acc-1", 10)
    d.run([d.record(deposited("acc-1", 4, 5))])
    plan = d.run([d.record(deposited("acc-1", 2, 10))])
    assert reasons(d) == ["version_gap"]
    assert not plan
    assert d.engine.metrics.duplicates == 1


def test_withdrawal_above_the_balance_is_a_fold_error(d):
    open_with(d, "acc-1", 100)
    rec = d.record(withdrawn("acc-1", 3, 500))
    d.run([rec])
    assert_one_deadletter(d, rec, "fold_error", "accounts", "MoneyWithdrawn", "AccountFoldError")
    assert balance(d, "acc-1") == 100


def test_bad_records_do_not_stop_other_aggregates_in_the_same_batch(d):
    d.run([
        d.record(opened("acc-1")),
        d.raw(b"acc-2", b"garbage"),
        d.record(deposited("acc-1", 2, 30)),
        d.record(withdrawn("acc-1", 3, 1000)),  # fold_error
        d.record(opened("acc-3", "bob")),
        d.record(deposited("acc-1", 3, 5)),  # the corrected v3, same batch
        d.record(deposited("acc-3", 5, 5)),  # version_gap
        d.record(deposited("acc-3", 2, 7)),  # parked
    ])
    assert reasons(d) == ["invalid_json", "fold_error", "version_gap", "parked"]
    assert balance(d, "acc-1") == 35
    assert d.row("accounts", "acc-3")["version"] == 1
    assert d.row("owners", "alice")["value"]["balance"] == 35
    assert d.row("owners", "bob")["value"]["balance"] == 0


# --- fold errors do not advance the aggregate ---------------------------------------------------


def test_fold_error_does_not_advance_the_aggregate_and_a_corrected_resend_applies(d):
    open_with(d, "acc-1", 100)
    d.run([d.record(withdrawn("acc-1", 3, 500))])
    assert d.meta_state("acc-1") == (2, False)
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, 2]
    assert d.row("accounts", "acc-1")["version"] == 2
    assert d.row("owners", "alice")["value"]["balance"] == 100

    d.run([d.record(withdrawn("acc-1", 3, 60))])
    assert reasons(d) == ["fold_error"]
    assert d.row("accounts", "acc-1")["version"] == 3
    assert balance(d, "acc-1") == 40
    assert d.row("owners", "alice")["value"]["balance"] == 40
    assert [e["data"] for e in d.indexed_events("acc-1")][2] == {"amount": 60}


def test_event_after_a_fold_error_is_a_gap(d):
    open_with(d, "acc-1", 100)
    d.run([d.record(withdrawn("acc-1", 3, 500)), d.record(deposited("acc-1", 4, 1))])
    assert reasons(d) == ["fold_error", "version_gap"]


# --- release ----------------------------------------------------------------------------------------


def park_at_two(d: Driver) -> None:
    """acc-1 at version 2 (balance 10), v4 and v5 parked."""
    open_with(d, "acc-1", 10)
    d.run([d.record(deposited("acc-1", 4, 100))])
    d.run([d.record(deposited("acc-1", 5, 1000))])


def test_release_reapplies_parked_records_once_the_missing_event_arrived(d):
    park_at_two(d)
    d.run([d.record(deposited("acc-1", 3, 1))])  # the missing one arrives while parked: parked too
    assert reasons(d) == ["version_gap", "parked", "parked"]
    assert d.meta_state("acc-1") == (2, True)
    assert balance(d, "acc-1") == 10

    d.run([], [d.release("acc-1")])
    assert d.meta_state("acc-1") == (5, False)
    assert d.parked("acc-1") == []
    row = d.row("accounts", "acc-1")
    assert row["version"] == 5
    assert row["value"]["balance"] == 1111
    assert row["value"]["deposits"] == 4
    assert d.row("owners", "alice")["value"]["balance"] == 1111
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, 2, 3, 4, 5]
    assert len(d.deadletters) == 3, "a release sends no new dead letters"
    assert d.engine.metrics.releases == 1

    # once, not twice: a second release is a no-op, and the aggregate flows again
    before = d.store.state()
    assert not d.run([], [d.release("acc-1")])
    assert d.store.state() == before
    d.run([d.record(deposited("acc-1", 6, 5))])
    assert d.row("accounts", "acc-1")["value"]["deposits"] == 5


def parked_now(d: Driver) -> int:
    """Aggregates with parked records, over every partition (what /metrics shows as projector_parked_aggregates)."""
    return sum(parked_aggregates(lambda prefix, start, p=p: d.store.scan(INDEX, p, prefix, start))
               for p in range(PARTITIONS))


def test_parked_aggregates_counts_each_parked_aggregate_once_until_it_is_released(d):
    assert parked_now(d) == 0
    park_at_two(d)  # acc-1: two parked records
    # Ids that share a prefix with acc-1, an escaped NUL and \1 among them: each is an aggregate of its own.
    for aid in ("acc-10", "acc-1\x00x", "acc-1\x01", "acc-2"):
        open_with(d, aid, 10)
        d.run([d.record(deposited(aid, 4, 1))])
        d.run([d.record(deposited(aid, 5, 1))])
    assert parked_now(d) == 5
    assert d.engine.metrics.parked_aggregates == 5
    d.run([], [d.release("acc-2")])  # its version 3 never came: parked again
    assert parked_now(d) == 5
    d.run([d.record(deposited("acc-1", 3, 1))])  # parked too, then released with the rest
    d.run([], [d.release("acc-1")])
    assert parked_now(d) == 4
    d.run([], [d.release("acc-10", skip_to=5)])
    assert parked_now(d) == 3


def test_release_in_the_batch_that_brings_the_missing_event(d):
    park_at_two(d)
    d.run([d.record(deposited("acc-1", 3, 1))], [d.release("acc-1")])
    assert d.meta_state("acc-1") == (5, False)
    assert balance(d, "acc-1") == 1111


def test_release_before_the_missing_event_arrived_parks_again(d):
    park_at_two(d)
    d.run([], [d.release("acc-1")])
    assert d.meta_state("acc-1") == (2, True)
    assert [p["events"][0]["version"] for p in d.parked("acc-1")] == [4, 5]
    assert balance(d, "acc-1") == 10
    assert reasons(d) == ["version_gap", "parked"]
    # the missing event then arrives, and a second release applies everything
    d.run([d.record(deposited("acc-1", 3, 1))], [d.release("acc-1")])
    assert d.meta_state("acc-1") == (5, False)
    assert balance(d, "acc-1") == 1111


def test_release_with_skip_to_skips_the_missing_versions(d):
    park_at_two(d)
    d.run([], [d.release("acc-1", skip_to=4)])
    assert d.meta_state("acc-1") == (5, False)
    assert balance(d, "acc-1") == 1110
    assert d.row("accounts", "acc-1")["version"] == 5
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, 2, 4, 5]
    assert d.parked("acc-1") == []
    d.run([d.record(deposited("acc-1", 3, 1))])  # too late: a duplicate now
    assert balance(d, "acc-1") == 1110


def test_release_with_skip_to_past_the_parked_records_drops_them(d):
    park_at_two(d)
    d.run([], [d.release("acc-1", skip_to=7)])
    assert d.meta_state("acc-1") == (6, False)
    assert d.parked("acc-1") == []
    assert balance(d, "acc-1") == 10
    d.run([d.record(deposited("acc-1", 7, 3))])
    assert balance(d, "acc-1") == 13


@pytest.mark.parametrize("skip_to", [1, 2])
def test_release_with_skip_to_at_or_below_the_applied_version_keeps_it_parked(d, skip_to):
    park_at_two(d)
    before = d.store.state()
    d.run([], [d.release("acc-1", skip_to=skip_to)])
    assert d.store.state() == before
    assert d.meta_state("acc-1") == (2, True)


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"action": "unpark"}', b'{"action": "release", "skip_to": 0}',
     b'{"action": "release", "skip_to": "4"}', b'{"action": "release", "skip_to": true}', b"[]"],
)
def test_malformed_release_commands_are_ignored(d, value):
    park_at_two(d)
    before = d.store.state()
    cmd = d.release("acc-1")
    cmd.value = value
    d.run([], [cmd])
    assert d.store.state() == before


def test_release_of_an_aggregate_that_is_not_parked_does_nothing(d):
    open_with(d, "acc-1", 10)
    before = d.store.state()
    assert not d.run([], [d.release("acc-1")])
    assert not d.run([], [d.release("acc-9")])
    assert d.store.state() == before


def test_release_where_a_parked_record_fails_its_fold_applies_the_rest_up_to_it(d):
    open_with(d, "acc-1", 10)
    d.run([d.record(withdrawn("acc-1", 4, 50))])  # gap; would also overdraw at v4
    d.run([d.record(deposited("acc-1", 3, 5))])  # parked
    d.run([], [d.release("acc-1")])
    assert d.meta("acc-1").version == 3
    assert balance(d, "acc-1") == 15
    assert reasons(d) == ["version_gap", "parked", "fold_error"]


def test_fold_error_on_release_dead_letters_the_original_key_and_value(d):
    open_with(d, "acc-1", 10)
    gap = d.record(withdrawn("acc-1", 4, 50))
    d.run([gap])
    d.run([d.record(deposited("acc-1", 3, 5))])
    d.run([], [d.release("acc-1")])
    send = d.deadletters[-1]
    assert headers(send)[HEADER_REASON] == "fold_error"
    assert headers(send)[HEADER_SOURCE] == f"events/{gap.partition}/{gap.offset}"
    assert (send.key, send.value) == (gap.key, gap.value)


def test_release_command_records_are_read_from_their_own_topic(d):
    park_at_two(d)
    cmd = d.release("acc-1")
    assert cmd.topic == COMMANDS
    d.run([d.record(deposited("acc-1", 3, 1))], [cmd])
    assert not d.meta("acc-1").parked


# --- composite records ---------------------------------------------------------------------------------


def test_composite_record_applies_whole(d):
    d.run([d.record([opened("acc-1"), deposited("acc-1", 2, 50), withdrawn("acc-1", 3, 20)])])
    assert d.row("accounts", "acc-1")["version"] == 3
    assert balance(d, "acc-1") == 30
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, 2, 3]


def test_composite_whose_later_element_fails_its_fold_applies_nothing(d):
    open_with(d, "acc-1", 10)
    rec = d.record([deposited("acc-1", 3, 100), withdrawn("acc-1", 4, 500)])
    d.run([rec])
    assert_one_deadletter(d, rec, "fold_error", "v4")
    assert d.meta("acc-1").version == 2
    assert balance(d, "acc-1") == 10
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, 2]
    assert d.row("owners", "alice")["value"]["balance"] == 10


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"aggregate_id": "acc-1", "type": "MoneyDeposited"}, "invalid_envelope"),
        (deposited("acc-2", 4, 1), "key_mismatch"),
        (deposited("acc-1", 5, 1), "invalid_envelope"),  # not consecutive
        (5, "invalid_envelope"),
    ],
    ids=["missing-fields", "mis-keyed", "not-consecutive", "not-an-object"],
)
def test_composite_with_a_bad_element_is_dead_lettered_whole(d, bad, reason):
    open_with(d, "acc-1", 10)
    rec = d.record([deposited("acc-1", 3, 100), bad], key="acc-1")
    d.run([rec])
    assert_one_deadletter(d, rec, reason)
    assert d.meta("acc-1").version == 2
    assert balance(d, "acc-1") == 10


def test_composite_with_duplicates_applies_only_the_new_elements(d):
    open_with(d, "acc-1", 10)
    d.run([d.record([opened("acc-1"), deposited("acc-1", 2, 10), deposited("acc-1", 3, 7)])])
    assert balance(d, "acc-1") == 17
    assert d.engine.metrics.duplicates == 2
    assert d.deadletters == []


def test_composite_past_the_next_version_is_a_gap_and_is_parked_whole(d):
    open_with(d, "acc-1", 10)
    d.run([d.record([deposited("acc-1", 4, 1), deposited("acc-1", 5, 2)])])
    assert reasons(d) == ["version_gap"]
    [parked] = d.parked("acc-1")
    assert [e["version"] for e in parked["events"]] == [4, 5]
    d.run([d.record(deposited("acc-1", 3, 4))], [d.release("acc-1")])
    assert balance(d, "acc-1") == 17


# --- the aggregate index -----------------------------------------------------------------------------------


def test_index_events_are_read_in_version_order_by_prefix_scan(d):
    recs = [d.record(opened("acc-1"))] + [d.record(deposited("acc-1", v, v)) for v in range(2, 13)]
    recs += [d.record(opened("acc-10", "bob")), d.record(deposited("acc-10", 2, 1))]
    d.run(recs[:7])
    d.run(recs[7:])
    events = d.indexed_events("acc-1")
    assert [e["version"] for e in events] == list(range(1, 13))
    assert all(e["aggregate_id"] == "acc-1" for e in events)
    assert events[0] == {**opened("acc-1"), "schema_version": 1}
    assert [e["version"] for e in d.indexed_events("acc-10")] == [1, 2]


def test_index_records_event_types_no_read_model_handles(d):
    open_with(d, "acc-1", 10)
    d.run([d.record(env("acc-1", 3, "AccountNoted", {"note": "hi"}))])
    assert d.meta_state("acc-1") == (3, False)
    assert [e["type"] for e in d.indexed_events("acc-1")] == ["AccountOpened", "MoneyDeposited", "AccountNoted"]
    assert d.row("accounts", "acc-1")["version"] == 2, "an unhandled event does not advance the row"
    d.run([d.record(deposited("acc-1", 4, 1))])
    assert d.row("accounts", "acc-1")["version"] == 4
    assert d.deadletters == []


def test_index_of_an_aggregate_with_only_unhandled_events_has_no_rows(d):
    d.run([d.record(env("x-1", 1, "SomethingHappened", {}))])
    assert d.meta_state("x-1") == (1, False)
    assert d.row("accounts", "x-1") is None
    assert d.store.tables() == {INDEX}


# --- re-keyed models -----------------------------------------------------------------------------------


def test_owners_and_currencies_equal_a_group_by_over_accounts(d):
    open_with(d, "a1", 10, "ann", "EUR")
    open_with(d, "a2", 20, "ann", "USD")
    open_with(d, "a3", 30, "bob", "EUR")
    d.run([d.record(withdrawn("a1", 3, 10)), d.record(closed("a1", 4)), d.record(deposited("a3", 3, 5))])
    accounts = d.store.table("accounts")
    assert values(d.store.table("owners")) == group_by(accounts, "owner")
    assert values(d.store.table("currencies")) == group_by(accounts, "currency")
    assert d.store.table("owners")["ann"]["members"] == 2


def test_derived_replay_of_repartition_messages_changes_nothing(d):
    d.run([d.record(opened("a1", "ann", "EUR")), d.record(deposited("a1", 2, 10))], derived=False)
    pending = list(d.repartitioned)
    d.flush_derived()
    before = d.store.state()
    for rec in pending:
        rec.offset += 1000
    plan = d.engine.plan_derived(pending)
    assert not plan
    assert d.engine.metrics.duplicates_derived == len(pending)
    assert d.store.state() == before


def test_plan_derived_skips_records_it_cannot_read(d):
    from enginekit import Rec

    bad = [
        Rec("r-unknown", 0, 0, b"ann", b'{"aggregate_id": "a1", "version": 1, "contribution": null}'),
        Rec(REPARTITION["owners"], 0, 0, b"ann", b"not json"),
        Rec(REPARTITION["owners"], 0, 1, None, b'{"aggregate_id": "a1", "version": 1, "contribution": null}'),
        Rec(REPARTITION["owners"], 0, 2, b"ann", b'{"version": 1}'),
    ]
    assert not d.engine.plan_derived(bad)


def test_resend_of_an_earlier_record_while_parked_loses_nothing(d):
    open_with(d, "acc-1", 10)
    d.run([d.record(deposited("acc-1", 5, 1))])  # gap: parked at 2
    d.run([d.record(deposited("acc-1", 3, 100))])  # parked [3]
    d.run([d.record([deposited("acc-1", 3, 100), deposited("acc-1", 4, 1000)])])  # overlapping re-send [3, 4]
    d.run([d.record(deposited("acc-1", 3, 100))])  # a re-send of the earlier record [3]
    d.run([], [d.release("acc-1")])
    assert d.meta_state("acc-1") == (5, False)
    assert balance(d, "acc-1") == 1111


def test_overlapping_resends_while_parked_in_arrival_order_lose_nothing(d):
    # the same records without the final re-send: released whole
    open_with(d, "acc-1", 10)
    d.run([d.record(deposited("acc-1", 5, 1))])
    d.run([d.record(deposited("acc-1", 3, 100))])
    d.run([d.record([deposited("acc-1", 3, 100), deposited("acc-1", 4, 1000)])])
    d.run([], [d.release("acc-1")])
    assert d.meta_state("acc-1") == (5, False)
    assert balance(d, "acc-1") == 1111


def _same_partition_ids() -> tuple[str, str]:
    for suffix in "abcdefghijklmnopqrstuvwxyz":
        other = f"acc-1\x00{suffix}"
        if partition_for(other.encode(), PARTITIONS) == partition_for(b"acc-1", PARTITIONS):
            return "acc-1", other
    raise AssertionError("no pair found")


def test_index_scan_of_one_aggregate_never_returns_another_aggregates_events(d):
    a, b = _same_partition_ids()
    d.run([d.record(opened(a)), d.record(opened(b, "bob"))])
    assert d.meta(a).version == 1 and d.meta(b).version == 1
    assert [e["aggregate_id"] for e in d.indexed_events(a)] == [a]


# --- several read models: all or nothing across them -------------------------------------------------------

DEPOSITS_ONLY = '''
NAME = "deposit_log"
DESCRIPTION = "the amounts deposited; 13 is unlucky"
HANDLES = ("MoneyDeposited",)
INITIAL = []


def fold(state, event):
    if event.data["amount"] == 13:
        raise ValueError("unlucky")
    return [*state, event.data["amount"]]
'''

PICKY_GROUPS = '''
NAME = "picky"
SOURCE = "accounts"


def key(account):
    if account["balance"] == 666:
        raise ValueError("no group for 666")
    return account["owner"]


def contribution(account):
    return {"balance": account["balance"]}
'''


@pytest.fixture
def multi(tmp_path) -> Driver:
    import shutil

    from enginekit import TABLES_DIR

    from projector.core.catalog import load_catalog

    folder = tmp_path / "tables"
    folder.mkdir()
    shutil.copy(TABLES_DIR / "accounts.py", folder / "mm_accounts.py")
    (folder / "mm_deposit_log.py").write_text(DEPOSITS_ONLY)
    (folder / "mm_picky.py").write_text(PICKY_GROUPS)
    return Driver(load_catalog(folder), repartition_topics={"picky": "r-picky"})


def test_each_model_folds_only_what_it_handles_with_its_own_row_version(multi):
    d = multi
    d.run([d.record(opened("acc-1")), d.record(deposited("acc-1", 2, 5)), d.record(withdrawn("acc-1", 3, 1))])
    assert d.row("accounts", "acc-1")["version"] == 3
    assert d.row("deposit_log", "acc-1") == {"version": 2, "value": [5]}
    assert d.row("picky", "alice")["value"] == {"balance": 4}


def test_fold_error_in_one_model_applies_the_record_to_none(multi):
    d = multi
    d.run([d.record(opened("acc-1")), d.record(deposited("acc-1", 2, 5))])
    rec = d.record([withdrawn("acc-1", 3, 1), deposited("acc-1", 4, 13)])
    d.run([rec])
    assert reasons(d) == ["fold_error"]
    assert "deposit_log" in headers(d.deadletters[0])[HEADER_ERROR]
    assert d.row("accounts", "acc-1")["version"] == 2
    assert d.row("deposit_log", "acc-1") == {"version": 2, "value": [5]}
    assert d.meta("acc-1").version == 2
    assert d.row("picky", "alice")["value"] == {"balance": 5}


def test_re_keyed_model_that_raises_on_the_new_row_is_a_fold_error(multi):
    d = multi
    d.run([d.record(opened("acc-1")), d.record(deposited("acc-1", 2, 600))])
    rec = d.record(deposited("acc-1", 3, 66))
    d.run([rec])
    assert reasons(d) == ["fold_error"]
    assert "picky" in headers(d.deadletters[0])[HEADER_ERROR]
    assert d.row("accounts", "acc-1")["value"]["balance"] == 600
    assert d.meta("acc-1").version == 2
    d.run([d.record(deposited("acc-1", 3, 67))])
    assert d.row("picky", "alice")["value"] == {"balance": 667}
