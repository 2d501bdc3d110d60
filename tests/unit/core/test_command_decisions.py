"""projector.core.commands: the command side deciding commands against the writer's own rows, and surviving crashes.

Command records are decided with ``decide_steps``; the plan is then executed
the way ``projector.app`` does it: the appended event records first (the
events log), then the sends, then the read-model rows, then the guard tables
(the aggregate index, the ``_commands`` answers, the members tables). The
appended records are folded back through ``Engine.plan`` as events-topic
records, as they come back from Kafka.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import orjson
import pytest
from enginekit import DEADLETTER, EVENTS, PARTITIONS, Driver, Rec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projector.core.commands import Answer, check_command, decide_steps, encode_command, prune_answers
from projector.core.control import ControlState
from projector.core.engine import COMMANDS, INDEX, Plan, answer_key, answer_time_key, put_answer, run_steps
from projector.core.envelope import decode_record
from projector.core.partitioning import partition_for

COMMAND_TOPIC = "commands"
TS_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
SETTINGS = ControlState().settings_view()


@dataclass
class CmdRec(Rec):
    """A command-topic record with the broker's timestamp (ms), as the writer gets it."""

    timestamp: Optional[int] = None


def part(aid: str) -> int:
    return partition_for(aid.encode(), PARTITIONS)


class Commands:
    """Builds command-topic records, with per-partition offsets."""

    def __init__(self, catalog) -> None:
        self.catalog = catalog
        self.offsets: dict[int, int] = defaultdict(int)

    def __call__(self, cid: Optional[str], aid: str, kind: str, data: dict, expected: Optional[int] = None,
                 reply_to: Optional[str] = "worker-1", ts: Optional[int] = TS_MS) -> CmdRec:
        body: dict[str, Any] = {"aggregate_type": "account", "aggregate_id": aid, "type": kind, "data": data}
        if cid is not None:
            body["command_id"] = cid
        if expected is not None:
            body["expected_version"] = expected
        command = check_command(body, self.catalog)
        p = part(aid)
        offset = self.offsets[p]
        self.offsets[p] += 1
        return CmdRec(COMMAND_TOPIC, p, offset, aid.encode(), encode_command(command, reply_to), ts)


def decide(d: Driver, records: Sequence[Rec], *, enabled: bool = True,
           ready: Callable[[int], bool] = lambda p: True) -> tuple[Plan, list[Answer]]:
    return run_steps(decide_steps(d.engine, d.catalog, list(records), events_topic=EVENTS,
                                   settings=SETTINGS, enabled=enabled, ready=ready))


def split_writes(d: Driver, plan: Plan) -> tuple[dict, dict]:
    guards = d.engine.guard_tables
    rows = {slot: items for slot, items in plan.writes.items() if slot[0] not in guards}
    guard = {slot: items for slot, items in plan.writes.items() if slot[0] in guards}
    return rows, guard


def write(d: Driver, writes: dict) -> None:
    for (table, partition), items in writes.items():
        for key, value in items.items():
            d.store.put(table, partition, key, value)


def route_sends(d: Driver, plan: Plan) -> None:
    topics = set(d.repartition_topics.values())
    for send in plan.sends:
        if send.topic == DEADLETTER:
            d.deadletters.append(send)
        elif send.topic in topics:
            d.repartitioned.append(d._rec(send.topic, send.key, send.value, send.partition))
        else:
            raise AssertionError(f"unexpected send to {send.topic}")


def execute(d: Driver, plan: Plan, log: Optional[list] = None) -> None:
    """The whole of ``app._execute``, without a crash: appends, sends, rows, guard tables."""
    for send in plan.appends:
        assert send.topic == EVENTS
        if log is not None:
            log.append(send)
    route_sends(d, plan)
    rows, guard = split_writes(d, plan)
    write(d, rows)
    write(d, guard)
    d.flush_derived()


def run(d: Driver, records: Sequence[Rec], log: Optional[list] = None, **kw: Any) -> tuple[Plan, list[Answer]]:
    plan, answers = decide(d, records, **kw)
    execute(d, plan, log)
    return plan, answers


def echo(d: Driver, appends: Sequence[Any]) -> Plan:
    """The appended records, come back from the events topic."""
    return d.run([d.raw(s.key, s.value, s.partition) for s in appends])


def stored_answer(d: Driver, cid: str, aid: str) -> Optional[dict]:
    """The stored answer's status and body (without the time it was stored)."""
    raw = d.store.get(COMMANDS, part(aid), answer_key(aid, cid))
    if raw is None:
        return None
    stored = orjson.loads(raw)
    return {"status": stored["status"], "body": stored["body"]}


@pytest.fixture
def d() -> Driver:
    return Driver()


@pytest.fixture
def cmd(d: Driver) -> Commands:
    return Commands(d.catalog)


def open_body(owner: str = "ann", currency: str = "EUR", initial: Optional[int] = None) -> dict:
    data: dict[str, Any] = {"owner": owner, "currency": currency}
    if initial is not None:
        data["initial_deposit"] = initial
    return data


# --- accepted commands ------------------------------------------------------------------------


def test_accepted_command_appends_one_composite_record_and_updates_rows_and_index_in_the_same_plan(d, cmd):
    plan, [answer] = decide(d, [cmd("c-open", "acc-1", "OpenAccount", open_body(initial=50))])
    assert answer.status == 200 and not answer.replayed
    assert answer.reply_to == "worker-1"
    body = answer.body
    assert body["command_id"] == "c-open" and body["aggregate_id"] == "acc-1" and body["version"] == 2
    events = body["events"]
    assert [e["id"] for e in events] == ["c-open:1", "c-open:2"]
    assert [e["version"] for e in events] == [1, 2]
    assert [e["type"] for e in events] == ["AccountOpened", "MoneyDeposited"]
    assert all(e["metadata"] == {"command_id": "c-open", "command_type": "OpenAccount"} for e in events)
    assert all(e["timestamp"] == "2023-11-14T22:13:20.000Z" for e in events)
    assert events[1]["data"] == {"amount": 50}

    # One record, a composite (a JSON array of both events), in the command's partition, keyed by aggregate id.
    [append] = plan.appends
    assert (append.topic, append.partition, append.key) == (EVENTS, part("acc-1"), b"acc-1")
    value = orjson.loads(append.value)
    assert isinstance(value, list) and [e["id"] for e in value] == ["c-open:1", "c-open:2"]
    assert [e.to_dict() for e in decode_record(append.key, append.value)] == events

    # The rows, the index and the answer are in the same plan.
    p = part("acc-1")
    assert set(plan.writes[("accounts", p)]) == {b"acc-1"}
    assert answer_key("acc-1", "c-open") in plan.writes[(COMMANDS, p)]
    assert (INDEX, p) in plan.writes
    assert d.store.state() == {}  # nothing written before the plan is executed
    execute(d, plan)
    row = d.row("accounts", "acc-1")
    assert row["version"] == 2 and row["value"]["balance"] == 50 and row["value"]["deposits"] == 1
    assert d.meta_state("acc-1") == (2, False)
    assert d.indexed_events("acc-1") == events
    assert stored_answer(d, "c-open", "acc-1") == {"status": 200, "body": body}
    # Stored at the command record's time (the events' timestamp), for pruning by age.
    assert orjson.loads(d.store.get(COMMANDS, p, answer_key("acc-1", "c-open")))["at"] == 1_700_000_000
    assert d.row("owners", "ann")["value"]["balance"] == 50
    assert d.engine.metrics.commands["accepted"] == 1


def test_single_event_command_appends_a_plain_record(d, cmd):
    plan, [answer] = decide(d, [cmd("c1", "acc-1", "OpenAccount", open_body())])
    assert answer.status == 200 and answer.body["version"] == 1
    [append] = plan.appends
    assert isinstance(orjson.loads(append.value), dict)
    assert orjson.loads(append.value)["id"] == "c1:1"


def test_a_record_without_timestamp_gives_events_without_timestamp(d, cmd):
    _, [answer] = decide(d, [cmd("c1", "acc-1", "OpenAccount", open_body(), ts=None)])
    assert "timestamp" not in answer.body["events"][0]


def test_commands_for_one_aggregate_in_one_batch_see_each_other(d, cmd):
    plan, answers = decide(d, [
        cmd("c1", "acc-1", "OpenAccount", open_body()),
        cmd("c2", "acc-1", "Deposit", {"amount": 100}, expected=1),
        cmd("c3", "acc-1", "Withdraw", {"amount": 70}, expected=2),
        cmd("c4", "acc-1", "Withdraw", {"amount": 31}),  # 30 left: rejected
    ])
    assert [a.status for a in answers] == [200, 200, 200, 422]
    assert [a.body.get("version") for a in answers[:3]] == [1, 2, 3]
    assert answers[3].body["reason"] == "insufficient_funds"
    assert [e["id"] for a in answers[:3] for e in a.body["events"]] == ["c1:1", "c2:1", "c3:1"]
    assert [orjson.loads(s.value)["version"] for s in plan.appends] == [1, 2, 3]
    # One write per key per batch.
    assert list(plan.writes[("accounts", part("acc-1"))]) == [b"acc-1"]
    execute(d, plan)
    assert d.row("accounts", "acc-1") == {"version": 3, "value": {
        "owner": "ann", "currency": "EUR", "balance": 30, "status": "open", "deposits": 1, "withdrawals": 1}}
    assert [e["id"] for e in d.indexed_events("acc-1")] == ["c1:1", "c2:1", "c3:1"]


# --- final answers: conflicts, rejections, stored answers -----------------------------------------


def test_version_conflict_appends_nothing_and_its_answer_is_final(d, cmd):
    run(d, [cmd("c1", "acc-1", "OpenAccount", open_body(initial=10))])
    plan, [answer] = decide(d, [cmd("c2", "acc-1", "Deposit", {"amount": 5}, expected=1)])
    assert answer.status == 409 and not answer.replayed
    assert answer.body == {"error": "version_conflict", "command_id": "c2", "expected_version": 1,
                           "actual_version": 2}
    assert plan.appends == []
    assert ("accounts", part("acc-1")) not in plan.writes
    execute(d, plan)
    assert d.meta_state("acc-1") == (2, False)

    # The same id again, in a later batch, now with the right version and even another body: the same 409.
    again = cmd("c2", "acc-1", "Deposit", {"amount": 500}, expected=2)
    plan2, [replayed] = decide(d, [again])
    assert (replayed.status, replayed.body, replayed.replayed) == (409, answer.body, True)
    assert plan2.appends == [] and not plan2.writes
    assert d.engine.metrics.commands["replayed"] == 1


def test_rejection_is_final_even_after_the_state_would_allow_it(d, cmd):
    run(d, [cmd("c1", "acc-1", "OpenAccount", open_body(initial=10))])
    plan, [answer] = decide(d, [cmd("w", "acc-1", "Withdraw", {"amount": 20})])
    assert answer.status == 422
    assert answer.body["error"] == "rejected" and answer.body["reason"] == "insufficient_funds"
    assert plan.appends == []
    execute(d, plan)
    run(d, [cmd("c3", "acc-1", "Deposit", {"amount": 100})])
    plan, [replayed] = decide(d, [cmd("w", "acc-1", "Withdraw", {"amount": 20})])
    assert (replayed.status, replayed.body, replayed.replayed) == (422, answer.body, True)
    assert plan.appends == []
    assert d.row("accounts", "acc-1")["value"]["balance"] == 110


def test_accepted_answer_is_replayed_and_appends_nothing(d, cmd):
    _, [first] = run(d, [cmd("c1", "acc-1", "OpenAccount", open_body(initial=10))])
    before = d.store.state()
    plan, [again] = decide(d, [cmd("c1", "acc-1", "OpenAccount", open_body(owner="zed", initial=99))])
    assert (again.status, again.body, again.replayed) == (200, first.body, True)
    assert plan.appends == [] and not plan.writes
    execute(d, plan)
    assert d.store.state() == before


def test_same_command_id_twice_in_one_batch_is_decided_once(d, cmd):
    plan, answers = decide(d, [
        cmd("c1", "acc-1", "OpenAccount", open_body(initial=10)),
        cmd("c1", "acc-1", "Deposit", {"amount": 1}),
        cmd("w", "acc-1", "Withdraw", {"amount": 11}),
        cmd("w", "acc-1", "Withdraw", {"amount": 1}),
    ])
    assert [(a.status, a.replayed) for a in answers] == [(200, False), (200, True), (422, False), (422, True)]
    assert answers[1].body == answers[0].body and answers[3].body == answers[2].body
    assert len(plan.appends) == 1


# --- not ready, disabled ----------------------------------------------------------------------


def test_not_ready_answers_503_and_stores_nothing(d, cmd):
    rec = cmd("c1", "acc-1", "OpenAccount", open_body())
    plan, [answer] = decide(d, [rec], ready=lambda p: False)
    assert answer.status == 503 and answer.body["error"] == "not_ready"
    assert plan.appends == [] and not plan.writes
    execute(d, plan)
    assert d.store.state() == {}
    plan, [answer] = decide(d, [rec], ready=lambda p: True)
    assert answer.status == 200 and answer.body["version"] == 1 and len(plan.appends) == 1


def test_not_ready_is_per_partition(d, cmd):
    a, b = cmd("c1", "acc-1", "OpenAccount", open_body()), cmd("c2", "acc-2", "OpenAccount", open_body())
    assert a.partition != b.partition
    plan, answers = decide(d, [a, b], ready=lambda p: p == b.partition)
    assert [x.status for x in answers] == [503, 200]
    assert [s.key for s in plan.appends] == [b"acc-2"]
    assert (COMMANDS, a.partition) not in plan.writes


def test_commands_disabled_answers_503_and_stores_nothing(d, cmd):
    rec = cmd("c1", "acc-1", "OpenAccount", open_body())
    plan, [answer] = decide(d, [rec], enabled=False)
    assert answer.status == 503 and answer.body["error"] == "commands_disabled"
    assert plan.appends == [] and not plan.writes
    execute(d, plan)
    assert d.store.state() == {}
    _, [answer] = run(d, [rec])
    assert answer.status == 200
    # A command id answered before keeps its answer while commands are disabled.
    plan, [again] = decide(d, [rec], enabled=False)
    assert (again.status, again.body, again.replayed) == (200, answer.body, True)


# --- echoes ---------------------------------------------------------------------------------------


def test_appended_records_coming_back_are_echoes_that_change_nothing(d, cmd):
    log: list = []
    run(d, [
        cmd("c1", "acc-1", "OpenAccount", open_body(initial=40)),
        cmd("c2", "acc-2", "OpenAccount", open_body(owner="bob")),
        cmd("c3", "acc-1", "Withdraw", {"amount": 15}),
        cmd("c4", "acc-1", "Withdraw", {"amount": 100}),  # rejected
    ], log)
    run(d, [cmd("c5", "acc-2", "Deposit", {"amount": 7}, expected=1)], log)
    assert len(log) == 4
    before = d.store.state()
    answers = {cid: stored_answer(d, cid, aid) for cid, aid in
               [("c1", "acc-1"), ("c2", "acc-2"), ("c3", "acc-1"), ("c4", "acc-1"), ("c5", "acc-2")]}
    plan = echo(d, log)
    assert not plan.writes and not plan.sends
    assert d.store.state() == before
    assert d.engine.metrics.command_echoes == 5  # events, not records: the composite has two
    assert d.deadletters == []
    assert answers == {cid: stored_answer(d, cid, aid) for cid, aid in
                       [("c1", "acc-1"), ("c2", "acc-2"), ("c3", "acc-1"), ("c4", "acc-1"), ("c5", "acc-2")]}


def test_the_events_log_rebuilds_rows_index_and_accepted_answers_elsewhere(d, cmd):
    log: list = []
    _, answers = run(d, [
        cmd("c1", "acc-1", "OpenAccount", open_body(initial=40)),
        cmd("c2", "acc-1", "Withdraw", {"amount": 15}),
    ], log)
    other = Driver()
    echo(other, log)
    assert other.engine.metrics.command_echoes == 0
    assert other.store.table("accounts") == d.store.table("accounts")
    # The index as readers see it (segments are cut where each worker's batches ended).
    assert other.index_view("acc-1") == d.index_view("acc-1")
    assert [e["version"] for e in other.indexed_events("acc-1")] == [1, 2, 3]
    for a in answers:
        assert stored_answer(other, a.command_id, "acc-1") == {"status": 200, "body": a.body}


# --- crash safety ------------------------------------------------------------------------------

ACCOUNTS = ("acc-1", "acc-3", "acc-4")  # partitions 1, 3, 3: two share the partition's writer
COMMAND_IDS = [f"c{i}" for i in range(40)]  # some repeat: a retry, or another command under a used id
#: Where the worker dies in the write sequence of a batch:
#: - "prefix": some appended records (a prefix per partition) are in Kafka, nothing else;
#: - "appends": all appended records are in Kafka, no store write;
#: - "rows": the read-model rows are written, the guard tables are not;
#: - "commit": everything is written (and the answers delivered), the command offsets are not committed.
CRASHES = ("prefix", "appends", "rows", "commit")


@st.composite
def account_commands(draw):
    """Account commands; ``expected_version`` is absent, right (by a crash-free guess) or wrong."""
    n = draw(st.integers(1, 50))
    out = []
    guess: dict[str, tuple[int, int, bool]] = {a: (0, 0, False) for a in ACCOUNTS}  # version, balance, open
    seen: set[tuple[int, str]] = set()
    for _ in range(n):
        aid = draw(st.sampled_from(ACCOUNTS))
        cid = draw(st.sampled_from(COMMAND_IDS))
        version, balance, is_open = guess[aid]
        kinds = ["Deposit"] * 4 + ["Withdraw"] * 4 + ["CloseAccount", "OpenAccount"]
        kind = draw(st.sampled_from(["OpenAccount"] * 3 + kinds if version == 0 else kinds))
        if kind == "OpenAccount":
            data = open_body(owner=draw(st.sampled_from(["ann", "bob"])), currency="EUR",
                             initial=draw(st.one_of(st.none(), st.integers(1, 100))))
        elif kind in ("Deposit", "Withdraw"):
            data = {"amount": draw(st.integers(1, 80))}
        else:
            data = {}
        expected = draw(st.sampled_from(["none", "none", "right", "wrong"]))
        expected = None if expected == "none" else version if expected == "right" else draw(st.integers(0, 6))
        out.append((cid, aid, kind, data, expected))
        if (aid, cid) in seen or (expected is not None and expected != version):
            continue
        seen.add((aid, cid))
        if kind == "OpenAccount" and version == 0:
            guess[aid] = (2, data["initial_deposit"], True) if "initial_deposit" in data else (1, 0, True)
        elif kind == "Deposit" and is_open:
            guess[aid] = (version + 1, balance + data["amount"], True)
        elif kind == "Withdraw" and is_open and data["amount"] <= balance:
            guess[aid] = (version + 1, balance - data["amount"], True)
        elif kind == "CloseAccount" and is_open and balance == 0:
            guess[aid] = (version + 1, 0, False)
    return out


def distinct_events(log: Sequence[Any]) -> dict[str, dict[int, list[dict]]]:
    """Per aggregate, per version: the distinct events the log holds."""
    out: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for send in log:
        for e in decode_record(send.key, send.value):
            e = e.to_dict()
            seen = out[e["aggregate_id"]][e["version"]]
            if e not in seen:
                seen.append(e)
    return out


class Cluster:
    """One writer at a time over a persisted store, an events log and a command topic."""

    def __init__(self, catalog) -> None:
        self.catalog = catalog
        self.d = Driver(catalog)
        self.log: list = []  # every appended record, re-appends included
        #: (aggregate id, command id) -> every final answer (status, body) delivered, in order.
        self.delivered: dict[tuple[str, str], list[tuple[int, dict]]] = defaultdict(list)
        self.crashes = 0

    def deliver(self, answers: Sequence[Answer], records: Sequence[Rec]) -> None:
        for answer, record in zip(answers, records):
            assert answer.status != 503, answer.body
            assert answer.status in (200, 409, 422), answer.body
            self.delivered[(answer.aggregate_id, answer.command_id)].append((answer.status, answer.body))

    def batch(self, records: Sequence[Rec], crash: Optional[str], prefix: Sequence[int]) -> None:
        d = self.d
        plan, answers = decide(d, records)
        assert len(answers) == len(records)
        if crash == "prefix":
            by_partition: dict[int, list] = defaultdict(list)
            for send in plan.appends:
                by_partition[send.partition].append(send)
            for i, (_, sends) in enumerate(sorted(by_partition.items())):
                self.log.extend(sends[: prefix[i % len(prefix)] % (len(sends) + 1)])
            return self.crash()
        self.log.extend(plan.appends)
        if crash == "appends":
            return self.crash()
        route_sends(d, plan)
        d.flush_derived()
        rows, guard = split_writes(d, plan)
        write(d, rows)
        if crash == "rows":
            return self.crash()
        write(d, guard)
        self.deliver(answers, records)
        if crash == "commit":
            return self.crash()

    def crash(self) -> None:
        """A new writer, from the store as persisted; it folds the whole events log before it decides."""
        self.crashes += 1
        old = self.d
        new = Driver(self.catalog)
        for (table, partition, key), value in old.store.state().items():
            new.store.put(table, partition, key, value)
        new.offsets = old.offsets
        new.deadletters = old.deadletters
        self.d = new
        echo(new, self.log)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=account_commands(),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=10),
    crashes=st.lists(st.sampled_from((None, None, *CRASHES)), max_size=16),
    prefix=st.lists(st.integers(0, 5), min_size=1, max_size=3),
)
def test_crashes_anywhere_in_the_write_sequence_keep_the_log_index_and_answers_consistent(
    commands, sizes, crashes, prefix
):
    cluster = Cluster(Driver().catalog)
    make = Commands(cluster.catalog)
    records = []
    for n, (cid, aid, kind, data, expected) in enumerate(commands):
        records.append(make(cid, aid, kind, data, expected, ts=TS_MS + 1000 * n))

    # The command topic: batches of the given sizes from the last committed record; a crash
    # before the commit delivers the batch's records again (in batches of the next sizes).
    committed = 0
    attempt = 0
    while committed < len(records):
        size = sizes[attempt % len(sizes)]
        crash = crashes[attempt] if attempt < len(crashes) else None
        attempt += 1
        batch = records[committed:committed + size]
        cluster.batch(batch, crash, prefix)
        if crash is None:
            committed += len(batch)
    d = cluster.d

    # The log: per aggregate, contiguous versions from 1, one event per version.
    log = distinct_events(cluster.log)
    for aid, versions in log.items():
        assert sorted(versions) == list(range(1, len(versions) + 1)), aid
        for v, events in versions.items():
            assert len(events) == 1, (aid, v, events)
    # The index holds the log's events, in order.
    for aid in ACCOUNTS:
        expected_events = [log[aid][v][0] for v in sorted(log.get(aid, {}))]
        assert d.indexed_events(aid) == expected_events, aid
        assert d.meta_state(aid) == (len(expected_events), False)

    # Answers never change once given, and every accepted command's events are in the log once.
    for (aid, cid), given_answers in cluster.delivered.items():
        assert all(a == given_answers[0] for a in given_answers), (cid, given_answers)
        status, body = given_answers[0]
        if status == 200:
            assert body["aggregate_id"] == aid
            mine = [v for v, [e] in log[aid].items() if e.get("metadata", {}).get("command_id") == cid]
            assert sorted(mine) == [e["version"] for e in body["events"]], (cid, mine, body)
            assert [log[aid][e["version"]][0] for e in body["events"]] == body["events"]
            assert body["version"] == body["events"][-1]["version"]
    for aid, versions in log.items():
        for v, [e] in versions.items():
            # No event in the log without an accepted answer for its command (delivered or not).
            cid = e["metadata"]["command_id"]
            assert stored_answer(d, cid, aid)["status"] == 200
            assert e in stored_answer(d, cid, aid)["body"]["events"]

    # Every command id gets its first answer again, whatever the body, and nothing is appended.
    resend = []
    for (aid, cid) in cluster.delivered:
        resend.append(make(cid, aid, "Deposit", {"amount": 1}, 0))
    plan, answers = decide(d, resend)
    assert plan.appends == []
    for record, answer in zip(resend, answers):
        assert answer.replayed
        assert (answer.status, answer.body) == cluster.delivered[(answer.aggregate_id, answer.command_id)][0]
    # Every command record got an answer at last.
    assert {(orjson.loads(r.value)["command"]["aggregate_id"], orjson.loads(r.value)["command"]["command_id"])
            for r in records} == set(cluster.delivered)

    # Balances never below zero; the rows are the fold of the log.
    fresh = Driver(cluster.catalog)
    echo(fresh, cluster.log)
    for aid in ACCOUNTS:
        row = d.row("accounts", aid)
        assert row == fresh.row("accounts", aid)
        if row is not None:
            assert row["value"]["balance"] >= 0
    assert d.deadletters == [] and fresh.deadletters == []


# --- command ids: scoped by aggregate, pruned by age ------------------------------------------


def same_partition_pair() -> tuple[str, str]:
    ids = [f"acc-{i}" for i in range(100)]
    first = ids[0]
    return first, next(a for a in ids[1:] if part(a) == part(first))


def test_one_command_id_on_two_aggregates_is_two_commands(d, cmd):
    a, b = same_partition_pair()
    run(d, [cmd("open-a", a, "OpenAccount", open_body()), cmd("open-b", b, "OpenAccount", open_body())])
    plan, answers = run(d, [cmd("same-id", a, "Deposit", {"amount": 5}), cmd("same-id", b, "Deposit", {"amount": 7})])
    assert [(x.status, x.replayed, x.aggregate_id) for x in answers] == [(200, False, a), (200, False, b)]
    assert [x.body["aggregate_id"] for x in answers] == [a, b]
    assert len(plan.appends) == 2
    assert (d.row("accounts", a)["value"]["balance"], d.row("accounts", b)["value"]["balance"]) == (5, 7)
    # Each is its own aggregate's, for a retry.
    _, [again] = run(d, [cmd("same-id", b, "Deposit", {"amount": 7})])
    assert again.replayed and again.body["aggregate_id"] == b


def test_a_stored_answer_from_before_the_scoping_still_counts_for_its_aggregate(d, cmd):
    a, b = same_partition_pair()
    run(d, [cmd("open-a", a, "OpenAccount", open_body())])
    legacy = {"status": 200, "body": {"command_id": "old", "aggregate_id": a, "version": 1, "events": []}}
    d.store.put(COMMANDS, part(a), b"old", orjson.dumps(legacy))
    plan, [answer] = run(d, [cmd("old", a, "Deposit", {"amount": 5})])
    assert answer.replayed and plan.appends == [] and answer.body == legacy["body"]
    # Not for another aggregate.
    run(d, [cmd("open-b", b, "OpenAccount", open_body())])
    plan, [answer] = run(d, [cmd("old", b, "Deposit", {"amount": 5})])
    assert not answer.replayed and len(plan.appends) == 1


def test_answers_older_than_the_ttl_are_pruned_and_the_id_is_then_a_new_command(d, cmd):
    a, _ = same_partition_pair()
    day = 86400
    run(d, [cmd("open", a, "OpenAccount", open_body(), ts=TS_MS)])
    run(d, [cmd("dep-old", a, "Deposit", {"amount": 1}, ts=TS_MS + 1000)])
    run(d, [cmd("dep-new", a, "Deposit", {"amount": 1}, ts=TS_MS + 2 * day * 1000)])
    run(d, [cmd("rejected", a, "Withdraw", {"amount": 10**6}, ts=TS_MS + 2000)])  # insufficient funds, stored
    now = TS_MS // 1000 + 2 * day
    plan, pruned = prune_answers(d.engine, part(a), before=now - day)
    assert pruned == 3  # open, dep-old, rejected
    assert all(value is None for value in plan.writes[(COMMANDS, part(a))].values())
    execute(d, plan)
    left = sorted(k for k, _ in d.store.scan(COMMANDS, part(a), b""))
    assert left == sorted([answer_key(a, "dep-new"), answer_time_key(now, a, "dep-new")])
    assert stored_answer(d, "dep-old", a) is None and stored_answer(d, "dep-new", a) is not None
    # A pruned id is a new command; a kept one is answered again.
    later = TS_MS + 2 * day * 1000
    plan, answers = run(d, [cmd("dep-old", a, "Deposit", {"amount": 1}, ts=later),
                            cmd("dep-new", a, "Deposit", {"amount": 1}, ts=later)])
    assert [x.replayed for x in answers] == [False, True] and len(plan.appends) == 1
    # Nothing more to prune; a limit bounds one round.
    assert prune_answers(d.engine, part(a), before=now - day)[1] == 0
    assert prune_answers(d.engine, part(a), before=now + 10 * day, limit=1)[1] == 1


def test_an_answer_stored_again_at_another_time_leaves_one_time_entry(d, cmd):
    a, _ = same_partition_pair()
    batch = d.engine.begin()
    put_answer(batch, part(a), a, "c", 200, {"x": 1}, at=100)
    execute(d, batch.finish())
    batch = d.engine.begin()
    put_answer(batch, part(a), a, "c", 200, {"x": 1}, at=200)
    execute(d, batch.finish())
    times = [k for k, _ in d.store.scan(COMMANDS, part(a), b"t\0")]
    assert times == [answer_time_key(200, a, "c")]


def test_a_decision_too_large_for_one_record_is_rejected_and_appends_nothing(d, cmd):
    d.engine.max_record = 20_000
    plan, [answer] = run(d, [cmd("big", "acc-big", "OpenAccount", open_body(owner="x" * 30_000))])
    assert (answer.status, answer.body["reason"]) == (422, "too_large"), answer.body
    assert plan.appends == [] and d.row("accounts", "acc-big") is None
    _, [again] = run(d, [cmd("big", "acc-big", "OpenAccount", open_body(owner="x" * 30_000))])
    assert again.replayed and again.status == 422
    _, [small] = run(d, [cmd("small", "acc-big", "OpenAccount", open_body())])
    assert small.status == 200
