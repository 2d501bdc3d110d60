"""Secondary indexes on two workers: lookups by owner and by status over both, paged; a change
moves a row between index values; a worker whose data dir is wiped restores the index from its changelog."""

from __future__ import annotations

import shutil

import orjson
import pytest
from support import get, produce, wait_for

from projector.core.partitioning import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
OWNERS = ("ann", "bob", "cy")
ACCOUNTS = {f"acc-{i:02d}": OWNERS[i % 3] for i in range(24)}


def event(aid: str, version: int, type_: str, data: dict) -> tuple[bytes, bytes]:
    envelope = {"id": f"{aid}/{version}", "aggregate_id": aid, "aggregate_type": "account", "type": type_,
                "version": version, "data": data}
    return aid.encode(), orjson.dumps(envelope)


def lookup(url: str, index: str, value: str, limit: int = 3) -> list[str]:
    """Every key under ``index`` = ``value``, page by page, following next_cursor."""
    keys, cursor = [], None
    for _ in range(100):
        status, body = get(f"{url}/tables/accounts/index/{index}/{value}?limit={limit}"
                           + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        assert len(body["rows"]) <= limit
        assert all(r["value"][index] == value for r in body["rows"])
        keys += [r["key"] for r in body["rows"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return keys
    raise AssertionError("more pages than rows")


def answers(url: str) -> dict[str, list[str]]:
    return {f"{index}={value}": lookup(url, index, value)
            for index, values in (("owner", OWNERS), ("status", ("open", "closed"))) for value in values}


def expected(closed: set[str]) -> dict[str, list[str]]:
    out = {f"owner={o}": sorted(a for a, owner in ACCOUNTS.items() if owner == o) for o in OWNERS}
    out["status=open"] = sorted(a for a in ACCOUNTS if a not in closed)
    out["status=closed"] = sorted(closed)
    return out


def test_index_lookups_over_two_workers_follow_changes_and_survive_a_wiped_data_dir(
        worker_factory, names, kafka_bootstrap):
    w1 = worker_factory("w1", partitions=PARTITIONS)
    w2 = worker_factory("w2", partitions=PARTITIONS)
    w1.wait_ready()
    w2.wait_ready()
    assert {partition_for(a.encode(), PARTITIONS) for a in ACCOUNTS} == set(range(PARTITIONS))
    produce(kafka_bootstrap, names["events"],
            [event(aid, 1, "AccountOpened", {"owner": owner, "currency": "EUR"}) for aid, owner in ACCOUNTS.items()])
    status, body = get(f"{w1.url}/tables")
    assert {t["name"]: t["indexes"] for t in body["tables"]}["accounts"] == ["owner", "status"]

    for w in (w1, w2):
        wait_for(lambda: answers(w.url) == expected(set()), 60, f"{w.name}'s index lookups to list every account")

    # Closing an account moves it from status open to closed; its owner entry stays.
    produce(kafka_bootstrap, names["events"], [event("acc-05", 2, "AccountClosed", {})])
    for w in (w1, w2):
        wait_for(lambda: answers(w.url) == expected({"acc-05"}), 30, f"{w.name} to list acc-05 as closed")
    assert get(f"{w2.url}/tables/accounts/index/status/open?limit=1000")[1]["next_cursor"] is None

    # A worker that lost its data dir restores the index with the table, from their changelogs.
    w2.stop()
    shutil.rmtree(w2.data_dir)
    w2.data_dir.mkdir(parents=True)
    w2.start()
    w2.wait_ready()

    def owned_by_w2() -> dict[int, list[str]]:
        """What w2 answers from its own state, for the partitions it owns (409 not_owner for the others)."""
        out = {}
        for p in range(PARTITIONS):
            status, body = get(f"{w2.url}/internal/index/accounts/status?partitions={p}&value=open&limit=100")
            if status == 200:
                out[p] = [r["key"] for r in body["rows"]]
        return out

    local = wait_for(owned_by_w2, 60, "w2 to own partitions again")
    for p, keys in local.items():
        assert keys == [a for a in expected({"acc-05"})["status=open"] if partition_for(a.encode(), PARTITIONS) == p]
    for w in (w1, w2):
        wait_for(lambda: answers(w.url) == expected({"acc-05"}), 60, f"{w.name} to answer as before the wipe")
