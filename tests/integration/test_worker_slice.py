"""The first vertical slice on real Kafka: events in, accounts read model out over HTTP.

10,000 valid events for 500 accounts go in through a plain Kafka producer.
Every account is read back over HTTP and compared with a fold computed here,
independently of tables/accounts.py. Then the worker restarts - once from its
local RocksDB state, once with its data dir deleted so the table comes back
from the changelog topic alone - and every account is checked again.
"""

from __future__ import annotations

import shutil

import orjson
import pytest
from support import fold_accounts, get, produce, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

ACCOUNTS = 500
EVENTS = 10_000


def mismatches(url: str, expected: dict[str, dict]) -> list[str]:
    bad = []
    for aid, row in expected.items():
        status, body = get(f"{url}/tables/accounts/{aid}")
        if status != 200:
            bad.append(f"{aid}: HTTP {status} {body}")
        elif body != {"table": "accounts", "key": aid, "version": row["version"], "value": row["value"]}:
            bad.append(f"{aid}: got {body}, expected {row}")
    return bad


def assert_all_accounts(url: str, expected: dict[str, dict], timeout: float) -> None:
    """Wait until every account matches; on timeout, say which did not."""
    seen: list[str] = []

    def all_match() -> bool:
        seen[:] = mismatches(url, expected)
        return not seen

    try:
        wait_for(all_match, timeout, "every account to match the oracle", interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {len(seen)} mismatches, first: {seen[:5]}") from None


def test_worker_folds_accounts_and_survives_restarts(worker_factory, names, kafka_bootstrap):
    envelopes = list(generate_histories(ACCOUNTS, EVENTS, seed=7))
    assert len(envelopes) == EVENTS
    expected = fold_accounts(envelopes)
    assert len(expected) == ACCOUNTS

    worker = worker_factory(partitions=4)
    worker.wait_ready()

    produce(kafka_bootstrap, names["events"],
            [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in envelopes])
    assert_all_accounts(worker.url, expected, timeout=120)

    status, body = get(f"{worker.url}/tables/accounts/no-such-account")
    assert (status, body["error"]) == (404, "not_found")
    status, body = get(f"{worker.url}/tables/nosuchtable/acc-000001")
    assert (status, body["error"]) == (404, "unknown_table")

    # Restart on the same data dir: served from local RocksDB state.
    worker.stop()
    worker.start()
    worker.wait_ready()
    assert mismatches(worker.url, expected) == []

    # Restart with the data dir deleted: the table comes back from its changelog.
    worker.stop()
    shutil.rmtree(worker.data_dir)
    worker.data_dir.mkdir()
    worker.start()
    worker.wait_ready()
    assert mismatches(worker.url, expected) == []

    # The same events again are duplicates: nothing changes.
    produce(kafka_bootstrap, names["events"],
            [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in envelopes[:200]])
    marker = {"id": "marker", "aggregate_id": "acc-marker", "aggregate_type": "account",
              "type": "AccountOpened", "version": 1, "data": {"owner": "o", "currency": "EUR"}}
    produce(kafka_bootstrap, names["events"], [(b"acc-marker", orjson.dumps(marker))])
    wait_for(lambda: get(f"{worker.url}/tables/accounts/acc-marker")[0] == 200, 60, "the marker account")
    assert mismatches(worker.url, expected) == []
