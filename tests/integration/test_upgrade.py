"""A real upgrade: a read model's fold changes (VERSION 2), rolled out by restarting the workers one by one.

Two workers fold 100,000 events into ``accounts`` version 1. Its module is
then replaced by version 2, whose fold adds a field, and the workers are
restarted one at a time while clients keep reading rows and long-polling for
new versions of accounts that keep receiving deposits. Version 2 is built
from the events topic's history beside version 1, and every worker switches
to it once it has caught up. No request fails; every row ends with the new
field and equals an oracle folded here; version 1's changelog is deleted.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from support import REPO, fold_accounts, get, produce, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

V2 = '''

# --- version 2: the fold also keeps the type of the last event applied --------------------
VERSION = 2
_fold_v1 = fold


def fold(state, event):
    return {**_fold_v1(state, event), "last_event": event.type}
'''


def oracle_v2(events: list[dict]) -> dict[str, dict]:
    rows = fold_accounts(events)
    last = {}
    for e in events:
        last[e["aggregate_id"]] = e["type"]
    return {aid: {"version": row["version"], "value": {**row["value"], "last_event": last[aid]}}
            for aid, row in rows.items()}


def listing(url: str) -> dict[str, dict]:
    rows, cursor = {}, None
    while True:
        query = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, body = get(f"{url}/tables/accounts?{query}", timeout=30)
        assert status == 200, (status, body)
        for row in body["rows"]:
            rows[row["key"]] = {"version": row["version"], "value": row["value"]}
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


class Clients:
    """Readers and long-pollers through whichever workers are up, and a writer of deposits to a few accounts."""

    def __init__(self, bootstrap: str, topic: str, hot: dict[str, dict], events: list[dict]) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.hot = hot  # account id -> its last envelope
        self.events = events
        self.up: list[str] = []
        self.failures: list[tuple] = []
        self.counts = {"reads": 0, "polls": 0, "deposits": 0, "retries": 0}
        self.stop = threading.Event()
        self.writer_stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self.read, self.poll, self.poll, self.write)]

    def url(self) -> str:
        with self.lock:
            return random.choice(self.up)

    def ask(self, path: str, timeout: float) -> tuple[str, int | None, object]:
        """GET ``path`` from a worker that is up, as a client should: a 503 that says when to retry
        (``Retry-After``: a worker shutting down with the request in hand) is sent again, to any
        worker that is up, after that time; ``retries`` counts them. Returns (url, status, body)."""
        for attempt in range(3):
            url = self.url()
            try:
                status, body = get(f"{url}{path}", timeout=timeout)
            except OSError as exc:
                status, body = None, repr(exc)
            if status == 503 and isinstance(body, dict) and body.get("retry_after") and attempt < 2:
                with self.lock:
                    self.counts["retries"] += 1
                time.sleep(body["retry_after"])
                continue
            return url, status, body
        return url, status, body

    def read(self) -> None:
        ids = [e["aggregate_id"] for e in self.events[:5000]]
        while not self.stop.is_set():
            aid = random.choice(ids)
            url, status, body = self.ask(f"/tables/accounts/{aid}", 60)
            if status != 200:
                self.failures.append(("read", time.strftime("%H:%M:%S"), url, aid, status, body))
            self.counts["reads"] += 1
            time.sleep(0.02)

    def poll(self) -> None:
        while not self.stop.is_set():
            aid = random.choice(list(self.hot))
            with self.lock:
                want = self.hot[aid]["version"] + 1
            url, status, body = self.ask(f"/tables/accounts/{aid}?min_version={want}&timeout_ms=25000", 60)
            if status != 200 or body["version"] < want:
                self.failures.append(("poll", time.strftime("%H:%M:%S"), url, aid, want, status, body))
            with self.lock:
                self.counts["polls"] += 1

    def write(self) -> None:
        while not self.writer_stop.is_set():
            aid = random.choice(list(self.hot))
            with self.lock:
                last = self.hot[aid]
                event = {**last, "id": str(uuid.uuid4()), "type": "MoneyDeposited", "version": last["version"] + 1,
                         "data": {"amount": 7}}
                self.hot[aid] = event
                self.events.append(event)
            produce(self.bootstrap, self.topic, [(aid.encode(), orjson.dumps(event))])
            self.counts["deposits"] += 1
            time.sleep(0.2)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        """Stop the readers and pollers, then the writer: a poll in flight waits for a deposit to come."""
        self.stop.set()
        for t in self.threads[:-1]:
            t.join(60)
        self.writer_stop.set()
        self.threads[-1].join(60)


def test_a_fold_upgrade_rolls_out_without_a_failed_request(worker_factory, names, kafka_bootstrap, tmp_path: Path):
    v1 = tmp_path / "tables-v1"
    shutil.copytree(REPO / "tables", v1)
    v2 = tmp_path / "tables-v2"
    shutil.copytree(REPO / "tables", v2)
    with open(v2 / "accounts.py", "a") as f:
        f.write(V2)

    events = list(generate_histories(5000, 100_000, seed=19))
    env1 = {"PROJECTOR_TABLES_DIR": str(v1)}
    workers = [worker_factory(f"w{i}", partitions=4, extra_env=env1) for i in (1, 2)]
    for w in workers:
        w.wait_ready()
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in events])
    expected_v1 = fold_accounts(events)
    wait_for(lambda: listing(workers[0].url) == expected_v1, 180, "version 1 to hold every account", interval=2)

    last: dict[str, dict] = {}
    for e in events:
        last[e["aggregate_id"]] = e
    hot = {aid: e for aid, e in list(last.items()) if e["type"] != "AccountClosed"}
    hot = dict(list(hot.items())[:6])
    clients = Clients(kafka_bootstrap, names["events"], hot, events)
    clients.up = [w.url for w in workers]
    clients.start()
    try:
        for w in workers:
            with clients.lock:
                clients.up = [x.url for x in workers if x is not w]
            w.stop()
            w.env["PROJECTOR_TABLES_DIR"] = str(v2)
            w.start()
            w.wait_ready(180)
            with clients.lock:
                clients.up = [x.url for x in workers]

        def switched() -> bool:
            for w in workers:
                tables = {t["name"]: t for t in get(f"{w.url}/tables")[1]["tables"]}
                if tables["accounts"]["version"] != 2 or tables["accounts"]["building"] is not None:
                    return False
            return True

        wait_for(switched, 240, "every worker to answer from accounts version 2", interval=1)
        switched_at = time.monotonic()
        time.sleep(3)  # the clients keep going across the switch
    finally:
        clients.finish()
    if clients.failures:
        (tmp_path / "failures.txt").write_text("\n".join(map(repr, clients.failures)))
    assert not clients.failures, (clients.counts, clients.failures[:3], clients.failures[-3:])
    assert clients.counts["reads"] > 100 and clients.counts["polls"] >= 10, clients.counts

    expected = oracle_v2(clients.events)
    wait_for(lambda: listing(workers[1].url) == expected, 120, "every row of version 2 to equal the oracle",
             interval=2)
    changelogs = {f"{names['app_id']}-accounts-changelog", f"{names['app_id']}-accounts-v2-changelog"}
    topics = wait_for(lambda: (t := asyncio.run(_topics(kafka_bootstrap))) and
                      f"{names['app_id']}-accounts-changelog" not in t and t,
                      max(1.0, 60 - (time.monotonic() - switched_at)), "version 1's changelog to be deleted")
    assert changelogs & topics == {f"{names['app_id']}-accounts-v2-changelog"}
    for w in workers:
        assert w.alive(), w.log_tail()
        assert "Traceback" not in w.log_path.read_text(errors="replace"), w.log_tail(80)
