"""The query API on several workers: every key from every worker, listings, read-your-writes (CONTRACT §5)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime, timezone

import aiohttp
import orjson
import pytest
from support import fold_accounts, get, group_by, produce, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration


async def _get_all(urls: list[str], concurrency: int = 16) -> list[tuple[int, dict]]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(url: str) -> tuple[int, dict]:
            async with sem:
                async with session.get(url) as r:
                    return r.status, await r.json()

        return await asyncio.gather(*(one(u) for u in urls))


def walk(base: str, table: str, limit: int, prefix: str = "") -> tuple[list[dict], int]:
    """Every row of a listing, page by page; returns the rows and the number of pages."""
    rows, cursor, pages = [], None, 0
    while True:
        params = f"limit={limit}" + (f"&prefix={prefix}" if prefix else "") + (f"&cursor={cursor}" if cursor else "")
        status, body = get(f"{base}/tables/{table}?{params}")
        assert status == 200, body
        pages += 1
        assert len(body["rows"]) <= limit
        rows.extend(body["rows"])
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, pages
        assert pages < 10_000


def test_three_workers_answer_every_key_and_list_every_row_once(worker_factory, names, kafka_bootstrap):
    envelopes = list(generate_histories(5000, 25_000, seed=21))
    oracle = fold_accounts(envelopes)
    workers = [worker_factory(f"w{i}", partitions=8) for i in (1, 2, 3)]
    for w in workers:
        w.wait_ready()
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in envelopes])
    last_key = max(oracle)
    for w in workers:
        wait_for(lambda: get(f"{w.url}/tables/accounts/{last_key}?min_version={oracle[last_key]['version']}"
                             f"&timeout_ms=5000")[0] == 200, 180, f"{w.name} to reach the last account's version")

    keys = sorted(oracle)
    for w in workers:
        # Every key through every worker, forwarded to its owner when need be.
        def all_match() -> bool:
            answers = asyncio.run(_get_all([f"{w.url}/tables/accounts/{k}" for k in keys]))
            return all(s == 200 and b["version"] == oracle[k]["version"] and b["value"] == oracle[k]["value"]
                       for k, (s, b) in zip(keys, answers))

        wait_for(all_match, 180, f"{w.name} to answer every account as the oracle", interval=2)

        # The listing, page by page: every row exactly once, in key order.
        rows, pages = walk(w.url, "accounts", limit=700)
        listed = [r["key"] for r in rows]
        assert listed == sorted(listed, key=lambda k: k.encode())
        assert len(listed) == len(set(listed)) == len(oracle)
        assert {r["key"]: {"version": r["version"], "value": r["value"]} for r in rows} == oracle
        assert pages == -(-len(oracle) // 700)

    # A prefix and a re-keyed table, through the last worker.
    prefixed, _ = walk(workers[2].url, "accounts", limit=37, prefix=keys[0][:-2])
    assert [r["key"] for r in prefixed] == [k for k in keys if k.startswith(keys[0][:-2])]
    owners, _ = walk(workers[2].url, "owners", limit=1000)
    assert {r["key"]: r["value"] for r in owners} == group_by(oracle, "owner")

    # Bad parameters are 400 invalid; an unknown table 404.
    base = workers[0].url
    for query in ("limit=0", "limit=-3", "limit=x", "cursor=%%%", "cursor=bm9wZQ"):
        status, body = get(f"{base}/tables/accounts?{query}")
        assert (status, body["error"]) == (400, "invalid"), (query, body)
    status, body = get(f"{base}/tables/accounts?limit=5000")
    assert status == 200 and len(body["rows"]) == 1000, "limit is capped at 1000"
    assert get(f"{base}/tables/nope?limit=3")[1]["error"] == "unknown_table"
    other_cursor = get(f"{base}/tables/owners?limit=1")[1]["next_cursor"]
    assert get(f"{base}/tables/accounts?cursor={other_cursor}")[0] == 400, "a cursor belongs to its table"


def _envelope(aid: str, version: int, type_: str, data: dict) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "aggregate_id": aid,
        "aggregate_type": "account",
        "type": type_,
        "version": version,
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def test_read_your_writes_waits_for_the_version_and_times_out_with_504(worker_factory, names, kafka_bootstrap):
    w1, w2 = worker_factory("w1", partitions=4), worker_factory("w2", partitions=4)
    w1.wait_ready()
    w2.wait_ready()
    aid = "acc-ryw"
    produce(kafka_bootstrap, names["events"], [
        (aid.encode(), orjson.dumps(_envelope(aid, 1, "AccountOpened", {"owner": "o", "currency": "EUR"}))),
    ])
    wait_for(lambda: get(f"{w1.url}/tables/accounts/{aid}")[0] == 200, 60, "version 1")

    for worker in (w1, w2):  # one of them owns the key, the other forwards
        version = get(f"{worker.url}/tables/accounts/{aid}")[1]["version"]
        target = version + 1
        answer: dict = {}

        def ask() -> None:
            started = time.monotonic()
            answer["reply"] = get(f"{worker.url}/tables/accounts/{aid}?min_version={target}&timeout_ms=20000",
                                  timeout=40)
            answer["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=ask)
        thread.start()
        time.sleep(0.5)  # let the request park before the write exists (it cannot be answered before anyway)
        assert thread.is_alive(), f"min_version={target} answered before version {target} was written: {answer}"
        produce(kafka_bootstrap, names["events"], [
            (aid.encode(), orjson.dumps(_envelope(aid, target, "MoneyDeposited", {"amount": 10}))),
        ])
        thread.join(timeout=40)
        status, body = answer["reply"]
        assert status == 200 and body["version"] == target, body
        assert answer["seconds"] < 20, "answered when the version arrived, not at the timeout"

        status, body = get(f"{worker.url}/tables/accounts/{aid}?min_version={target + 1}&timeout_ms=300")
        assert (status, body) == (504, {"error": "timeout", "version": target})

    status, body = get(f"{w1.url}/tables/accounts/acc-none?min_version=1&timeout_ms=100")
    assert (status, body) == (504, {"error": "timeout", "version": None})
    for query in ("min_version=-1", "timeout_ms=30001", "timeout_ms=x", "min_version=1.5"):
        status, body = get(f"{w1.url}/tables/accounts/{aid}?{query}")
        assert (status, body["error"]) == (400, "invalid"), (query, body)
