"""projector.bench.build: the backlog that continues each account's history, the raised read-model version,
and the figures of a run. No Kafka, no worker."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest

from projector.bench.build import (
    account_ends,
    backlog_events,
    last_per_partition,
    raise_version,
    summarize,
    versioned_tables,
)
from projector.core.catalog import load_catalog
from projector.core.partitioning import partition_for
from projector.demo.data import generate_histories


def test_account_ends_are_the_last_version_and_whether_the_account_closed():
    events = [
        {"aggregate_id": "a", "version": 1, "type": "AccountOpened"},
        {"aggregate_id": "b", "version": 1, "type": "AccountOpened"},
        {"aggregate_id": "a", "version": 3, "type": "AccountClosed"},
        {"aggregate_id": "a", "version": 2, "type": "MoneyWithdrawn"},  # out of order: the highest counts
        {"aggregate_id": "b", "version": 2, "type": "MoneyDeposited"},
    ]
    assert account_ends(events) == {"a": (3, True), "b": (2, False)}


def test_the_backlog_continues_each_open_accounts_versions_and_leaves_closed_ones_alone():
    history = list(generate_histories(200, 3000, seed=3))
    ends = account_ends(history)
    closed = {aid for aid, (_, c) in ends.items() if c}
    assert closed, "the demo data closes some accounts"
    backlog = list(backlog_events(ends, 5000))
    assert len(backlog) == 5000
    assert all(e["type"] == "MoneyDeposited" and e["data"]["amount"] > 0 for e in backlog)
    assert not {e["aggregate_id"] for e in backlog} & closed
    versions = defaultdict(list)
    for e in backlog:
        versions[e["aggregate_id"]].append(e["version"])
    for aid, got in versions.items():
        last = ends[aid][0]
        assert got == list(range(last + 1, last + 1 + len(got))), aid
    ids = [e["id"] for e in history + backlog]
    assert len(set(ids)) == len(ids)
    assert list(backlog_events(ends, 5000)) == backlog  # deterministic


def test_the_backlog_folds_with_the_accounts_read_model_after_the_history():
    """Every backlog event applies to its account as the history left it: no fold error, no gap."""
    catalog = load_catalog()
    fold = catalog.get("accounts").module.fold
    history = list(generate_histories(50, 600, seed=3))
    rows: dict = {}
    versions: dict = {}
    for e in history + list(backlog_events(account_ends(history), 1000)):
        aid = e["aggregate_id"]
        assert e["version"] == versions.get(aid, 0) + 1
        rows[aid] = fold(rows.get(aid), SimpleNamespace(**e))
        versions[aid] = e["version"]


def test_no_open_account_means_no_backlog():
    with pytest.raises(ValueError):
        list(backlog_events({"a": (3, True)}, 1))
    assert list(backlog_events({"a": (3, True)}, 0)) == []


def test_last_per_partition_is_the_last_event_on_each_partition():
    events = [{"aggregate_id": f"acc-{i:06d}", "version": i + 1} for i in range(100)]
    last = last_per_partition(events, 4)
    for partition, (aid, version) in last.items():
        on_it = [e for e in events if partition_for(e["aggregate_id"].encode(), 4) == partition]
        assert (aid, version) == (on_it[-1]["aggregate_id"], on_it[-1]["version"])
    assert set(last) == {partition_for(e["aggregate_id"].encode(), 4) for e in events}


def test_the_raised_version_loads_and_its_fold_adds_a_field(tmp_path):
    dest = versioned_tables(tmp_path / "tables", 2)
    catalog = load_catalog(dest)
    model = catalog.get("accounts")
    assert model.version == 2
    assert {m.name for m in catalog.all} == {m.name for m in load_catalog().all}
    opened = SimpleNamespace(type="AccountOpened", aggregate_id="a", version=1,
                             data={"owner": "o", "currency": "EUR"})
    row = model.module.fold(None, opened)
    assert row["last_event"] == "AccountOpened" and row["balance"] == 0
    deposit = SimpleNamespace(type="MoneyDeposited", aggregate_id="a", version=2, data={"amount": 5})
    assert model.module.fold(row, deposit) == {**row, "balance": 5, "deposits": 1, "last_event": "MoneyDeposited"}
    assert "VERSION = 3" in raise_version("x = 1\n", 3)


def test_summarize_reads_the_live_rate_the_build_rate_and_the_switch():
    samples = [(100.0, 0, 0), (101.0, 1000, 0), (102.0, 5000, 2000), (104.0, 10000, 6000), (110.0, 10000, 30000)]
    watch = {"started": 99.0, "first_record": 100.5, "no_lag": 104.0, "applied": 104.5, "caught_up": 110.0,
             "switched": 111.0, "samples": samples, "metrics": {}}
    out = summarize(watch, backlog=10000, history=25000)
    assert out["live_seconds"] == 4.0 and out["live_events_per_second"] == 2500
    assert out["build_records"] == 30000 and out["records_in_topic"] == 35000
    assert out["build_records_per_second_while_live_busy"] == 1500  # 6000 built by 104.5, over 4 s
    assert out["build_records_per_second_after"] == round(24000 / 5.5)
    assert out["build_records_per_second_overall"] == 3750  # from 102.0, the first sample with a record built
    assert out["switch_seconds_after_start"] == 12.0 and out["switch_seconds_after_first_record"] == 10.5
    no_build = summarize({**watch, "switched": None}, backlog=10000, history=25000)
    assert "build_records" not in no_build and no_build["live_events_per_second"] == 2500
