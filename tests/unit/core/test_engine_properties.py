"""Properties of the whole engine loop (plan -> store -> plan_derived -> store) over demo histories.

The issue's "done when":
- splitting the record stream into batches anywhere gives the same final state;
- duplicates (re-sends of earlier records) change nothing and are counted;
- old payloads upcast give the same state as the same events written at the current schema version;
- a re-keyed model equals a direct group-by over the aggregate-keyed rows, after every batch,
  also when accounts change hands between groups, fail their folds, or are parked and released.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import orjson
import pytest
from enginekit import PARTITIONS, TABLES_DIR, Driver, Rec, deposited, group_by, opened, values
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from projector.core import index as agg
from projector.core.catalog import load_catalog
from projector.core.engine import COMMANDS, INDEX
from projector.core.lifecycle import BUILDS
from projector.core.partitioning import partition_for
from projector.demo.data import generate_histories

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

histories = st.integers(min_value=1, max_value=5).flatmap(
    lambda a: st.tuples(st.just(a), st.integers(min_value=a, max_value=a * 8), st.integers(0, 2**32 - 1))
)

REPO_CATALOG = load_catalog(TABLES_DIR)


def envelopes(history: tuple[int, int, int]) -> list[dict[str, Any]]:
    return list(generate_histories(*history))


def records(envs: list[Any]) -> list[Rec]:
    """One record per envelope (or per list of envelopes: a composite), offsets per partition."""
    out, offsets = [], {}
    for e in envs:
        aid = (e[0] if isinstance(e, list) else e)["aggregate_id"].encode()
        p = partition_for(aid, PARTITIONS)
        offsets[p] = offsets.get(p, -1) + 1
        out.append(Rec("events", p, offsets[p], aid, orjson.dumps(e)))
    return out


def split(items: list, cuts: set[int]) -> list[list]:
    """``items`` cut before every index in ``cuts``."""
    out, start = [], 0
    for cut in sorted(c for c in cuts if 0 < c < len(items)):
        out.append(items[start:cut])
        start = cut
    out.append(items[start:])
    return [b for b in out if b]


def run_batches(d: Driver, batches: list[list[Rec]], derived_batches: Optional[list[int]] = None) -> None:
    for batch in batches:
        d.run(batch, derived=False)
        d.flush_derived(derived_batches or ())


def index_as_read(d: Driver, p: int, key: bytes, raw: bytes) -> Optional[tuple]:
    """An index entry as readers see it: a meta row with the aggregate's stored events; None for a
    segment (where segments are cut depends on the batches, what they hold does not)."""
    if key.startswith(agg.EVENT):
        return None
    if key.startswith(agg.META):
        aid = key[len(agg.META):].replace(b"\x01\x01", b"\x00").replace(b"\x01\x02", b"\x01").decode()
        return (orjson.loads(raw), d.indexed_events(aid))
    return (raw,)


def comparable(d: Driver) -> dict:
    """The whole store, minus the re-keyed rows' change counters and the offset of the
    last repartition record they took (both depend on where batches were cut)."""
    derived = {m.name for m in d.catalog.derived}
    members = {f"_{n}_members" for n in derived}
    out = {}
    for (table, p, key), raw in d.store.state().items():
        if table in derived or table in members:
            value = orjson.loads(raw)
            value.pop("version")
            value.pop("offset", None)
            out[(table, p, key)] = value
        elif table == INDEX:
            view = index_as_read(d, p, key, raw)
            if view is not None:
                out[(table, p, key)] = view
        else:
            out[(table, p, key)] = raw
    return out


# --- batching ---------------------------------------------------------------------------------------


@PROPS
@given(histories, st.sets(st.integers(min_value=1, max_value=60)), st.lists(st.integers(1, 5), max_size=4))
def test_splitting_the_stream_into_batches_anywhere_gives_the_same_state(history, cuts, derived_batches):
    recs = records(envelopes(history))
    whole = Driver(REPO_CATALOG)
    run_batches(whole, [recs])
    parts = Driver(REPO_CATALOG)
    run_batches(parts, split(recs, cuts), derived_batches)
    assert comparable(parts) == comparable(whole)
    assert whole.deadletters == parts.deadletters == []
    assert whole.store.tables() == {"accounts", "owners", "currencies", INDEX, "_owners_members",
                                    "_currencies_members", "_accounts_idx"}
    # The secondary indexes hold exactly the entries of the rows as they end up.
    expected = {
        (partition_for(aid.encode(), PARTITIONS), b"%s\0%s\0%s" % (name, row["value"][field].encode(), aid.encode()))
        for aid, row in whole.store.table("accounts").items()
        for name, field in ((b"owner", "owner"), (b"status", "status"))
    }
    assert {(p, k) for (t, p, k) in parts.store.state() if t == "_accounts_idx"} == expected


def exact_state(d: Driver) -> dict:
    """Everything but the offset of the last repartition record a re-keyed row took (it
    depends on how many repartition records there were): row versions, members and the
    index as read must not depend on where batches were cut or what was re-sent."""
    derived = {m.name for m in d.catalog.derived}
    out = {}
    for (table, p, key), raw in d.store.state().items():
        if table in derived:
            row = orjson.loads(raw)
            row.pop("offset")
            raw = row
        elif table == INDEX:
            raw = index_as_read(d, p, key, raw)
            if raw is None:
                continue
        out[(table, p, key)] = raw
    return out


def test_batch_boundaries_do_not_change_any_table_exactly():
    recs = records([opened("acc-1"), deposited("acc-1", 2, 10)])
    one, two = Driver(REPO_CATALOG), Driver(REPO_CATALOG)
    run_batches(one, [recs])
    run_batches(two, [recs[:1], recs[1:]])
    assert comparable(one) == comparable(two)
    assert exact_state(one) == exact_state(two)


# --- duplicates ------------------------------------------------------------------------------------------


@PROPS
@given(histories, st.sets(st.integers(min_value=1, max_value=60)), st.data())
def test_duplicates_anywhere_change_nothing_and_are_counted(history, cuts, data):
    recs = records(envelopes(history))
    batches = split(recs, cuts)
    # Re-send earlier records: each copy goes into a batch at or after its original's, after it.
    n_dups = data.draw(st.integers(min_value=0, max_value=8), label="duplicates")
    with_dups = [list(b) for b in batches]
    positions = [(bi, ri) for bi, b in enumerate(batches) for ri in range(len(b))]
    for _ in range(n_dups):
        bi, ri = data.draw(st.sampled_from(positions), label="original")
        original = batches[bi][ri]
        target = data.draw(st.integers(min_value=bi, max_value=len(batches) - 1), label="batch")
        start = with_dups[target].index(original) + 1 if target == bi else 0
        at = data.draw(st.integers(min_value=start, max_value=len(with_dups[target])), label="at")
        with_dups[target].insert(at, Rec(original.topic, original.partition, original.offset + 10_000,
                                         original.key, original.value))
    base, dup = Driver(REPO_CATALOG), Driver(REPO_CATALOG)
    run_batches(base, batches)
    run_batches(dup, with_dups)
    assert exact_state(dup) == exact_state(base)
    assert dup.engine.metrics.duplicates == n_dups
    assert base.engine.metrics.duplicates == 0
    assert dup.deadletters == []
    assert dup.engine.metrics.events_applied == base.engine.metrics.events_applied


@PROPS
@given(histories, st.integers(min_value=2, max_value=4), st.sets(st.integers(min_value=1, max_value=60)))
def test_composites_and_overlapping_resends_give_the_same_state(history, chunk, cuts):
    envs = envelopes(history)
    singles = records(envs)
    by_account: dict[str, list] = {}
    for e in envs:
        by_account.setdefault(e["aggregate_id"], []).append(e)
    composites = []
    for evs in by_account.values():
        for start in range(0, len(evs), chunk):
            composites.append(evs[start:start + chunk])
            if start:  # an overlapping re-send: the last event before, then this chunk
                composites.append(evs[start - 1:start + chunk])
    base, comp = Driver(REPO_CATALOG), Driver(REPO_CATALOG)
    run_batches(base, [singles])
    run_batches(comp, split(records(composites), cuts))
    assert comparable(comp) == comparable(base)
    assert comp.deadletters == []


# --- upcasting ----------------------------------------------------------------------------------------------

UPCAST_FOLD = '''

import dataclasses as _dc

_fold_at_v1 = fold


def fold(state, event):
    """MoneyDeposited is at schema version 2 here: {"amount": {"cents": n}}."""
    if event.type == "MoneyDeposited":
        assert event.schema_version == 2, event
        event = _dc.replace(event, data={"amount": event.data["amount"]["cents"]})
    return _fold_at_v1(state, event)
'''

UPCASTERS = '''
SCHEMA_VERSIONS = {"MoneyDeposited": 2}
UPCASTERS = {("MoneyDeposited", 1): lambda d: {**d, "amount": {"cents": d["amount"]}}}
'''


def _copy_tables(dest: Path, prefix: str) -> None:
    dest.mkdir()
    for name in ("accounts", "owners", "currencies"):
        shutil.copy(TABLES_DIR / f"{name}.py", dest / f"{prefix}{name}.py")


@pytest.fixture(scope="module")
def upcast_catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upcast") / "tables"
    _copy_tables(folder, "up_")
    with open(folder / "up_accounts.py", "a") as f:
        f.write(UPCAST_FOLD)
    (folder / "up_schema_deposits.py").write_text(UPCASTERS)
    return load_catalog(folder)


def to_v2(e: dict) -> dict:
    if e["type"] != "MoneyDeposited":
        return e
    return {**e, "schema_version": 2, "data": {"amount": {"cents": e["data"]["amount"]}}}


def read_models_state(d: Driver) -> dict:
    """Every table; of the index only versions and parking (its events keep the envelopes
    as written); of the re-keyed rows all but the offset of the last repartition record
    they took (a re-sent message has a new offset)."""
    derived = {m.name for m in d.catalog.derived}
    out = {}
    for k, v in d.store.state().items():
        if k[0] == INDEX:
            if k[2].startswith(b"e\x00"):
                continue
            if k[2].startswith(b"m\x00"):
                meta = orjson.loads(v)
                v = (meta["version"], meta["parked"])
        elif k[0] in derived:
            row = orjson.loads(v)
            row.pop("offset", None)
            v = row
        out[k] = v
    return out


@PROPS
@given(histories, st.sets(st.integers(min_value=1, max_value=60)), st.data())
def test_upcast_old_payloads_give_the_same_state_as_current_ones(upcast_catalog, history, cuts, data):
    envs = envelopes(history)
    mixed = [to_v2(e) if data.draw(st.booleans(), label=f"v2 #{i}") else e for i, e in enumerate(envs)]
    runs = {}
    for label, catalog, stream in [("repo-v1", REPO_CATALOG, envs), ("up-v1", upcast_catalog, envs),
                                   ("up-v2", upcast_catalog, [to_v2(e) for e in envs]),
                                   ("up-mixed", upcast_catalog, mixed)]:
        d = Driver(catalog)
        run_batches(d, split(records(stream), cuts))
        assert d.deadletters == [], label
        runs[label] = read_models_state(d)
    assert runs["up-v1"] == runs["repo-v1"]
    assert runs["up-v2"] == runs["repo-v1"]
    assert runs["up-mixed"] == runs["repo-v1"]


def test_upcast_catalog_refuses_v2_deposits_in_the_repo_catalog_and_the_index_keeps_what_was_written(
    upcast_catalog,
):
    envs = [opened("acc-1"), deposited("acc-1", 2, 10)]
    d = Driver(upcast_catalog)
    d.run(records(envs))
    assert d.row("accounts", "acc-1")["value"]["balance"] == 10
    assert d.indexed_events("acc-1")[1]["data"] == {"amount": 10}
    assert d.indexed_events("acc-1")[1]["schema_version"] == 1
    repo = Driver(REPO_CATALOG)
    repo.run(records([opened("acc-1"), to_v2(deposited("acc-1", 2, 10))]))
    assert [dict(s.headers)["projector.reason"] for s in repo.deadletters] == [b"invalid_envelope"]


def test_parked_old_payloads_are_upcast_when_released(upcast_catalog):
    d = Driver(upcast_catalog)
    d.run(records([opened("acc-1"), deposited("acc-1", 2, 10)]))
    d.run(records([deposited("acc-1", 4, 1000)]))  # v1 payload, gap: parked as written
    d.run(records([to_v2(deposited("acc-1", 3, 100))]))  # v2 payload, parked
    assert d.parked("acc-1")[1]["events"][0]["data"] == {"amount": 1000}
    d.run([], [d.release("acc-1")])
    assert d.meta("acc-1").version == 4
    assert d.row("accounts", "acc-1")["value"]["balance"] == 1110
    assert [e["schema_version"] for e in d.indexed_events("acc-1")] == [1, 1, 2, 1]


# --- re-keyed models equal a direct group-by ----------------------------------------------------------------

TIERS = '''
NAME = "tiers"
DESCRIPTION = "open accounts by balance tier; closed accounts are in no tier"
SOURCE = "accounts"


def key(account):
    if account["status"] != "open":
        return None
    b = account["balance"]
    return "zero" if b == 0 else "low" if b < 20000 else "mid" if b < 60000 else "high"


def contribution(account):
    return {"accounts": 1, "balance": account["balance"]}
'''

BY_STATUS = '''
NAME = "by_status"
SOURCE = "accounts"
INITIAL = {"accounts": 0, "balance": 0, "deposits": 0}


def key(account):
    return account["status"]


def contribution(account):
    return {"accounts": 1, "balance": account["balance"], "deposits": account["deposits"]}
'''


def tier(v: dict) -> Optional[str]:
    if v["status"] != "open":
        return None
    b = v["balance"]
    return "zero" if b == 0 else "low" if b < 20000 else "mid" if b < 60000 else "high"


@pytest.fixture(scope="module")
def rekey_catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rekey") / "tables"
    _copy_tables(folder, "rk_")
    (folder / "rk_tiers.py").write_text(TIERS)
    (folder / "rk_by_status.py").write_text(BY_STATUS)
    return load_catalog(folder)


REKEY_TOPICS = {"owners": "r-owners", "currencies": "r-currencies", "tiers": "r-tiers", "by_status": "r-status"}


def expected_groups(accounts: dict[str, dict]) -> dict[str, dict]:
    out = {"owners": group_by(accounts, "owner"), "currencies": group_by(accounts, "currency"),
           "tiers": {}, "by_status": {}}
    for row in accounts.values():
        v = row["value"]
        t = tier(v)
        if t is not None:
            g = out["tiers"].setdefault(t, {"accounts": 0, "balance": 0})
            g["accounts"] += 1
            g["balance"] += v["balance"]
        g = out["by_status"].setdefault(v["status"], {"accounts": 0, "balance": 0, "deposits": 0})
        g["accounts"] += 1
        g["balance"] += v["balance"]
        g["deposits"] += v["deposits"]
    return out


def check_groups(d: Driver) -> None:
    accounts = d.store.table("accounts")
    expected = expected_groups(accounts)
    for name, groups in expected.items():
        # A group whose last member left keeps an empty row (value None, served as 404).
        rows = {k: r for k, r in d.store.table(name).items() if r["value"] is not None}
        assert all(r["members"] == 0 for r in d.store.table(name).values() if r["value"] is None), name
        assert values(rows) == groups, name
        assert {k: r["members"] for k, r in rows.items()} == {k: g["accounts"] for k, g in groups.items()}, name


@PROPS
@given(histories, st.sets(st.integers(min_value=1, max_value=80)), st.data())
def test_re_keyed_models_equal_a_group_by_after_every_batch(rekey_catalog, history, cuts, data):
    envs = envelopes(history)
    stream: list[dict] = []
    for i, e in enumerate(envs):
        if e["version"] > 1 and data.draw(st.integers(0, 5), label=f"overdraw before #{i}") == 0:
            # a withdrawal no balance covers, at the version the real event will take: fold_error
            stream.append({**e, "id": f"bad-{i}", "type": "MoneyWithdrawn", "data": {"amount": 10**12}})
        if data.draw(st.integers(0, 7), label=f"early copy of a later event before #{i}") == 0:
            later = envs[i + 1:]
            if later:
                stream.append(data.draw(st.sampled_from(later), label="early"))  # a gap, or applied early
        stream.append(e)
    d = Driver(rekey_catalog, repartition_topics=REKEY_TOPICS)
    for batch in split(records(stream), cuts):
        d.run(batch, derived=False)
        if data.draw(st.booleans(), label="flush derived now"):
            d.flush_derived(data.draw(st.lists(st.integers(1, 4), max_size=3), label="derived batches"))
            check_groups(d)
    d.flush_derived()
    check_groups(d)
    # release every parked aggregate: the final state is the one without any injection
    parked = sorted({aid for aid in {e["aggregate_id"] for e in envs} if d.meta(aid).parked})
    event(f"parked aggregates: {min(len(parked), 2)}{'+' if len(parked) > 2 else ''}")
    if parked:
        d.run([], [d.release(aid) for aid in parked])
        check_groups(d)
    for reason in sorted({dict(s.headers)["projector.reason"].decode() for s in d.deadletters}):
        event(f"dead letter: {reason}")
    event(f"tiers seen: {len({tier(r['value']) for r in d.store.table('accounts').values()})}")
    clean = Driver(rekey_catalog, repartition_topics=REKEY_TOPICS)
    clean.run(records(envs))
    assert values(d.store.table("accounts")) == values(clean.store.table("accounts"))
    def live(table: dict) -> dict:  # emptied groups keep a row with value None
        return {k: v for k, v in values(table).items() if v is not None}

    for name in REKEY_TOPICS:
        assert live(d.store.table(name)) == live(clean.store.table(name)), name
    assert not any(d.meta(aid).parked for aid in d.store.table("accounts"))
    reasons = {dict(s.headers)["projector.reason"].decode() for s in d.deadletters}
    assert reasons <= {"fold_error", "version_gap", "parked"}


# --- a crash in the middle of a batch's sends ------------------------------------------------


def _crash_mid_batch(d: Driver, batch: list, rounds: int) -> None:
    """Plan ``batch`` and keep what the worker had sent when it died after ``rounds`` of its
    three send rounds (1: repartition messages and dead letters, 2: read-model rows,
    3: the guard tables); recovery from the changelogs restores just those."""
    plan = d.engine.plan(list(batch))
    guards = d.engine.guard_tables
    topics = set(d.repartition_topics.values())
    for send in plan.sends:  # round 1 reached Kafka
        if send.topic in topics:
            d.repartitioned.append(d._rec(send.topic, send.key, send.value, send.partition))
    if rounds >= 2:
        for (table, partition), items in plan.writes.items():
            if table not in guards:
                for key, value in items.items():
                    d.store.put(table, partition, key, value)
    d.flush_derived()


@PROPS
@given(histories, st.sets(st.integers(min_value=1, max_value=80), min_size=1), st.sampled_from([1, 2]))
def test_a_crash_between_send_rounds_replays_to_the_same_state(history, cuts, rounds):
    """The worker sends a batch's messages, then its rows, then the index that vouches for
    them, each round only after Kafka has the one before. A crash between two rounds must
    replay, from the committed offset, to exactly the state of a run without the crash."""
    recs = records(envelopes(history))
    batches = split(recs, cuts)
    crash_at = sorted(cuts)[0] % len(batches)
    clean = Driver(REPO_CATALOG)
    run_batches(clean, batches)
    d = Driver(REPO_CATALOG)
    run_batches(d, batches[:crash_at])
    _crash_mid_batch(d, batches[crash_at], rounds)
    run_batches(d, batches[crash_at:])  # the replay, then the rest
    assert d.deadletters == [] and read_models_state(d) == read_models_state(clean)


def test_guard_tables_are_the_index_the_command_answers_the_build_positions_and_the_members_tables():
    d = Driver(REPO_CATALOG)
    assert d.engine.guard_tables == {INDEX, COMMANDS, BUILDS, "_owners_members", "_currencies_members"}


@PROPS
@given(histories, st.integers(min_value=0, max_value=10_000))
def test_a_crash_between_group_rows_and_members_replays_to_the_same_state(history, seed):
    """On the re-keyed side the group rows reach Kafka before their members. If the
    worker dies in between, the repartition records are consumed again: the rows must
    not count them twice (they remember the last record's offset), the members must
    be completed."""
    recs = records(envelopes(history))
    clean = Driver(REPO_CATALOG)
    run_batches(clean, [recs])
    d = Driver(REPO_CATALOG)
    d.run(recs, derived=False)
    pending = list(d.repartitioned)
    cut = seed % (len(pending) + 1)
    done, crashed = pending[:cut], pending[cut:]
    d.store.apply(d.engine.plan_derived(done))
    dplan = d.engine.plan_derived(crashed)
    for (table, partition), items in dplan.writes.items():
        if table not in d.engine.guard_tables:  # group rows made it, members did not
            for key, value in items.items():
                d.store.put(table, partition, key, value)
    d.store.apply(d.engine.plan_derived(crashed))  # the same records again
    d.repartitioned = []
    assert read_models_state(d) == read_models_state(clean)
