"""Scale-out and faults under load: workers come and go, one is killed, one loses its state.

300,000 events over 5,000 accounts go to an 8-partition topic in six chunks.
Between chunks, while the workers still fold the last one, the test changes
the group: 1 -> 2 -> 4 -> 3 workers, then kills one with ``kill -9`` and
restarts it from its old data dir, restarts another with its data dir
deleted, and goes down to 1 worker. Three poison records are mixed in. In
the end every read model must equal the oracle computed here, and the
dead-letter topic must hold the poison records and nothing else.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import orjson
import pytest

from projector.demo import generate_histories
from support import fold_accounts, get, group_by, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

ACCOUNTS = 5000
EVENTS = 300_000
PARTITIONS = 8
POISON = [(f"poison-{i}".encode(), b"{this is not json") for i in range(3)]


def _rows(url: str, table: str) -> dict[str, Any]:
    """A whole table through one worker's listing (every partition, every worker)."""
    out: dict[str, Any] = {}
    cursor = None
    while True:
        query = f"limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, body = get(f"{url}/tables/{table}?{query}", timeout=60)
        assert status == 200, body
        for row in body["rows"]:
            out[row["key"]] = {"version": row["version"], "value": row["value"]}
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def _ready(workers: list) -> None:
    for w in workers:
        w.wait_ready(timeout=300)


@pytest.mark.parametrize("starting", [1, 2])
def test_workers_join_leave_crash_and_lose_state_under_load(worker_factory, names, kafka_bootstrap, starting):
    histories = list(generate_histories(ACCOUNTS, EVENTS, seed=7))
    records = [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories]
    size = len(records) // 6 + 1
    chunks = [records[i:i + size] for i in range(0, len(records), size)]
    chunks[2] = chunks[2][:100] + [POISON[0]] + chunks[2][100:]
    chunks[4] = chunks[4][:100] + POISON[1:] + chunks[4][100:]
    w = {n: worker_factory(f"w{n}", partitions=PARTITIONS, start=False) for n in (1, 2, 3, 4)}
    for n in range(1, starting + 1):
        w[n].start()
    _ready([w[n] for n in range(1, starting + 1)])
    steps: list[tuple[str, float]] = []

    def step(what: str, action) -> None:
        began = time.monotonic()
        action()
        steps.append((what, round(time.monotonic() - began, 1)))

    produce(kafka_bootstrap, names["events"], chunks[0])
    if starting == 1:
        step("1 -> 2 workers", lambda: (w[2].start(), _ready([w[1], w[2]])))
    produce(kafka_bootstrap, names["events"], chunks[1])
    step("2 -> 4 workers", lambda: (w[3].start(), w[4].start(), _ready([w[1], w[2], w[3], w[4]])))
    produce(kafka_bootstrap, names["events"], chunks[2])
    step("4 -> 3 workers (SIGTERM)", lambda: (w[4].stop(), _ready([w[1], w[2], w[3]])))
    produce(kafka_bootstrap, names["events"], chunks[3])
    step("kill -9 and restart from the old data dir", lambda: (w[2].kill9(), w[2].start(), _ready([w[2]])))
    produce(kafka_bootstrap, names["events"], chunks[4])

    def wipe() -> None:
        w[3].stop()
        shutil.rmtree(w[3].data_dir)
        w[3].data_dir.mkdir(parents=True)
        w[3].start()
        _ready([w[3]])

    step("restart with the data dir deleted", wipe)
    produce(kafka_bootstrap, names["events"], chunks[5])
    step("3 -> 1 worker", lambda: (w[2].stop(), w[3].stop(), _ready([w[1]])))

    accounts = fold_accounts(histories)
    expected = {"accounts": accounts, "owners": group_by(accounts, "owner"),
                "currencies": group_by(accounts, "currency")}

    def matches() -> bool:
        got = _rows(w[1].url, "accounts")
        if {k: r["version"] for k, r in got.items()} != {k: r["version"] for k, r in accounts.items()}:
            return False
        return all({k: r["value"] for k, r in _rows(w[1].url, t).items()} ==
                   {k: (r["value"] if "value" in r else r) for k, r in rows.items()}
                   for t, rows in expected.items())

    wait_for(matches, 600, "every read model to equal the oracle", interval=3)
    got = _rows(w[1].url, "accounts")
    assert {k: r["value"] for k, r in got.items()} == {k: r["value"] for k, r in accounts.items()}

    dead = read_topic(kafka_bootstrap, f"{names['events']}.deadletter")
    # A poison record may be dead-lettered again after a crash (at-least-once), never anything else.
    assert {r.key for r in dead} == {k for k, _ in POISON}, [(r.key, r.value[:60]) for r in dead][:10]
    reasons = {dict(r.headers)["projector.reason"] for r in dead}
    assert reasons == {b"invalid_json"}
    print(f"\nfault steps (starting with {starting}): {steps}")
