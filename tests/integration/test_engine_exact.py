"""The projection engine on real Kafka: exact read models out of a messy event stream.

200,000 events over 5,000 accounts go in through a plain producer, with 2%
duplicate records, 50 composite records, 20 malformed or invalid records and
5 version gaps mixed in. Every ``accounts``, ``owners`` and ``currencies``
row must then equal an oracle computed here, the dead-letter topic must hold
exactly the bad records with the right reasons, and the gapped aggregates
must be frozen at their last good version. The second test kills the worker
with ``kill -9`` halfway and restarts it: the rows must come out the same.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pytest
from support import fold_accounts, get, group_by, produce, prometheus, read_topic, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

EVENTS = 200_000
ACCOUNTS = 5_000
PARTITIONS = 8


@dataclass
class Workload:
    records: list[tuple[bytes, bytes]]
    accounts: dict[str, dict]  # oracle rows {"version", "value"}
    owners: dict[str, dict]
    currencies: dict[str, dict]
    deadletters: Counter = field(default_factory=Counter)  # (key, reason) -> count
    gapped: dict[str, int] = field(default_factory=dict)  # account -> frozen version


def build_workload(seed: int) -> Workload:
    rng = random.Random(seed)
    events = list(generate_histories(ACCOUNTS, EVENTS, seed=seed))
    by_account: dict[str, list[dict]] = {}
    for e in events:
        by_account.setdefault(e["aggregate_id"], []).append(e)
    long_enough = sorted(a for a, evs in by_account.items() if len(evs) >= 8)
    chosen = rng.sample(long_enough, 55)
    gap_accounts, composite_accounts = chosen[:5], chosen[5:]

    # 5 version gaps: drop one event in the middle of each; the account stays at the one before.
    dropped: set[tuple[str, int]] = set()
    gapped = {}
    for aid in gap_accounts:
        k = rng.randint(3, len(by_account[aid]) - 2)
        dropped.add((aid, k))
        gapped[aid] = k - 1

    # 50 composite records: 2-3 consecutive events of one account in one record.
    composite_at: dict[tuple[str, int], list[dict]] = {}
    absorbed: set[tuple[str, int]] = set()
    for aid in composite_accounts:
        evs = by_account[aid]
        size = rng.choice((2, 3))
        start = rng.randint(0, len(evs) - size)
        group = evs[start:start + size]
        composite_at[(aid, group[0]["version"])] = group
        absorbed.update((aid, e["version"]) for e in group[1:])

    records: list[tuple[bytes, bytes]] = []
    deadletters: Counter = Counter()
    good: list[int] = []  # indexes of records that get applied (candidates for duplicates)
    for e in events:
        aid, version = e["aggregate_id"], e["version"]
        if (aid, version) in dropped or (aid, version) in absorbed:
            continue
        records.append((aid.encode(), orjson.dumps(composite_at.get((aid, version), e))))
        if aid in gapped and version > gapped[aid]:
            reason = "version_gap" if version == gapped[aid] + 2 else "parked"
            deadletters[(aid, reason)] += 1
        else:
            good.append(len(records) - 1)

    # 2% duplicate records: a re-send of an applied record, somewhere after the original.
    resend_after: dict[int, list[int]] = {}
    for i in rng.sample(good, EVENTS // 50):
        resend_after.setdefault(rng.randint(i, len(records) - 1), []).append(i)
    with_duplicates = []
    for i, record in enumerate(records):
        with_duplicates.append(record)
        with_duplicates.extend(records[j] for j in resend_after.get(i, ()))
    records = with_duplicates

    # 20 malformed or invalid records.
    bad = [
        (b"bad-json-1", b"{not json", "invalid_json"),
        (b"bad-json-2", b"", "invalid_json"),
        (b"bad-json-3", b"\xff\xfe\x00", "invalid_json"),
        (b"bad-json-4", b'{"id": "x"', "invalid_json"),
        (b"bad-env-1", b"5", "invalid_envelope"),
        (b"bad-env-2", b'"a string"', "invalid_envelope"),
        (b"bad-env-3", b"[]", "invalid_envelope"),
        (b"bad-env-4", b"[1, 2]", "invalid_envelope"),
        (b"bad-env-5", b"null", "invalid_envelope"),
    ]
    template = {"id": "bad", "aggregate_type": "account", "type": "MoneyDeposited", "version": 1,
                "data": {"amount": 5}}
    for i, (change, reason) in enumerate([
        ({"version": 0}, "invalid_envelope"),
        ({"version": "1"}, "invalid_envelope"),
        ({"data": [1]}, "invalid_envelope"),
        ({"type": ""}, "invalid_envelope"),
        ({"timestamp": "yesterday"}, "invalid_envelope"),
        ({"metadata": "x"}, "invalid_envelope"),
        ({"id": None}, "invalid_envelope"),
        ({"aggregate_id": "someone-else"}, "key_mismatch"),
        ({"aggregate_id": "acc-000001"}, "key_mismatch"),
        ({"aggregate_id": "someone-else", "version": 2}, "key_mismatch"),
        ({"aggregate_id": "someone-else", "type": "AccountOpened"}, "key_mismatch"),
    ]):
        key = f"bad-{i}".encode()
        value = {**template, "aggregate_id": key.decode(), **change}
        bad.append((key, orjson.dumps({k: v for k, v in value.items() if v is not None}), reason))
    assert len(bad) == 20
    for key, value, reason in bad:
        records.insert(rng.randint(0, len(records)), (key, value))
        deadletters[(key.decode(), reason)] += 1

    applied = [e for e in events if not (e["aggregate_id"] in gapped and e["version"] > gapped[e["aggregate_id"]])]
    accounts = fold_accounts(applied)
    return Workload(records, accounts, group_by(accounts, "owner"), group_by(accounts, "currency"),
                    deadletters, gapped)


def mismatches(url: str, table: str, expected: dict[str, dict], with_version: bool) -> list[str]:
    bad = []
    for key, row in expected.items():
        status, body = get(f"{url}/tables/{table}/{key}")
        if status != 200:
            bad.append(f"{table}/{key}: HTTP {status} {body}")
            continue
        want = row["value"] if with_version else row
        got = body["value"]
        if got != want or (with_version and body["version"] != row["version"]):
            bad.append(f"{table}/{key}: got v{body['version']} {got}, expected {row}")
    return bad


def wait_caught_up(worker, timeout: float) -> None:
    def caught_up() -> bool:
        m = prometheus(worker.url)
        lags = [v for k, v in m.items() if k.startswith("projector_consumer_lag{")]
        return len(lags) == PARTITIONS and sum(lags) == 0

    wait_for(caught_up, timeout, f"{worker.name} to read every partition to its end", interval=1.0)


def assert_exact(worker, w: Workload, timeout: float) -> None:
    seen: list[str] = []

    def all_rows_match() -> bool:
        seen[:] = (mismatches(worker.url, "accounts", w.accounts, True)
                   + mismatches(worker.url, "owners", w.owners, False)
                   + mismatches(worker.url, "currencies", w.currencies, False))
        return not seen

    try:
        wait_for(all_rows_match, timeout, "every accounts/owners/currencies row to equal the oracle", interval=2.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {len(seen)} mismatches, first: {seen[:5]}") from None
    # Parked aggregates are frozen at their last good version.
    for aid, version in w.gapped.items():
        status, body = get(f"{worker.url}/tables/accounts/{aid}")
        assert (status, body["version"]) == (200, version)


def deadletters_by_source(bootstrap: str, topic: str) -> tuple[Counter, Counter]:
    """(key, reason) counts over all dead letters, and over distinct sources."""
    all_, distinct, sources = Counter(), Counter(), set()
    for r in read_topic(bootstrap, f"{topic}.deadletter"):
        h = dict(r.headers)
        key = (r.key.decode(), h["projector.reason"].decode())
        all_[key] += 1
        source = h["projector.source"]
        assert h["projector.error"], "every dead letter says what went wrong"
        if source not in sources:
            sources.add(source)
            distinct[key] += 1
    return all_, distinct


def test_messy_stream_gives_exact_read_models_and_dead_letters(worker_factory, names, kafka_bootstrap):
    w = build_workload(seed=3)
    worker = worker_factory(partitions=PARTITIONS)
    worker.wait_ready()
    produce(kafka_bootstrap, names["events"], w.records)
    wait_caught_up(worker, 600)
    assert_exact(worker, w, 300)
    all_, distinct = deadletters_by_source(kafka_bootstrap, names["events"])
    assert distinct == w.deadletters
    assert all_ == w.deadletters, "without a crash, each bad record is dead-lettered exactly once"
    m = prometheus(worker.url)
    assert m["projector_duplicates_total"] >= EVENTS // 50


def test_kill_9_in_the_middle_gives_the_same_rows(worker_factory, names, kafka_bootstrap):
    w = build_workload(seed=4)
    worker = worker_factory(partitions=PARTITIONS)
    worker.wait_ready()
    produce(kafka_bootstrap, names["events"], w.records)
    wait_for(lambda: prometheus(worker.url)["projector_records_total"] >= len(w.records) // 3, 300,
             "a third of the records to be handled")
    worker.kill9()
    worker.start()
    worker.wait_ready()
    wait_caught_up(worker, 600)
    assert_exact(worker, w, 300)
    # At-least-once: a batch in flight at the kill may be dead-lettered twice, never lost.
    _, distinct = deadletters_by_source(kafka_bootstrap, names["events"])
    assert distinct == w.deadletters
