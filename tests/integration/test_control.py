"""The control topic and the global control table, on real worker processes (CONTRACT §3).

Oracle: the control table is computed here from what the test wrote (last
write wins, a tombstone or JSON null deletes, a non-JSON value is ignored),
and checked against the topic as Kafka holds it.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from typing import Any, Optional

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from support import get, http, prometheus, wait_for

pytestmark = pytest.mark.integration

MALFORMED = b"{not json"


class Oracle:
    """The control table the test expects, from the records it wrote, in offset order."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}
        self.last_offset = -1
        self.records = 0

    def wrote(self, key: str, value: Optional[bytes], offset: int) -> None:
        assert offset > self.last_offset, "one partition: offsets grow"
        self.last_offset = offset
        self.records += 1
        if value is None:
            self.entries.pop(key, None)
            return
        try:
            decoded = json.loads(value)
        except ValueError:
            return  # ignored (CONTRACT §3)
        if decoded is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = decoded


class Writer:
    """A plain Kafka producer on the control topic, on its own event loop."""

    def __init__(self, bootstrap: str, topic: str, oracle: Oracle) -> None:
        self.topic = topic
        self.oracle = oracle
        self.loop = asyncio.new_event_loop()

        async def start() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
            await producer.start()
            return producer

        self.producer = self.loop.run_until_complete(start())

    def write(self, key: str, value: Optional[bytes]) -> int:
        meta = self.loop.run_until_complete(self.producer.send_and_wait(self.topic, key=key.encode(), value=value))
        self.oracle.wrote(key, value, meta.offset)
        return meta.offset

    def close(self) -> None:
        self.loop.run_until_complete(self.producer.stop())
        self.loop.close()


def random_records(rng: random.Random, n: int, keys: int) -> list[tuple[str, Optional[bytes]]]:
    """``n`` records over ``keys`` keys: JSON values, deletes (tombstones and null) and some non-JSON values."""
    out = []
    for i in range(n):
        key = f"setting.{rng.randrange(keys)}"
        r = rng.random()
        if r < 0.1:
            value = None
        elif r < 0.15:
            value = b"null"
        elif r < 0.18:
            value = MALFORMED
        else:
            value = orjson.dumps(rng.choice([i, f"v{i}", {"i": i, "nested": [i, True]}, [i], i % 2 == 0, i / 4]))
        out.append((key, value))
    return out


def control_of(worker, token: Optional[str] = None) -> dict:
    status, body = get(f"{worker.url}/control", token=token)
    assert status == 200, body
    return body


def assert_holds(worker, oracle: Oracle, token: Optional[str] = None) -> None:
    body = wait_for(
        lambda: (b := control_of(worker, token))["offset"] >= oracle.last_offset and b,
        60, f"{worker.name} to apply control offset {oracle.last_offset}",
    )
    assert body["offset"] == oracle.last_offset
    assert body["entries"] == oracle.entries


def _settings(bootstrap: str, names: dict[str, str]):
    from projector.runtime.config import Settings

    return Settings.from_env(
        {
            "PROJECTOR_BROKER": f"kafka://{bootstrap}",
            "PROJECTOR_APP_ID": names["app_id"],
            "PROJECTOR_EVENTS_TOPIC": names["events"],
            "PROJECTOR_CONTROL_TOPIC": names["control"],
        }
    )


def topic_table(bootstrap: str, names: dict[str, str]) -> dict:
    """The control table read straight from Kafka by projector's own reader."""
    from projector.runtime.control_table import read_control_topic

    return asyncio.run(read_control_topic(_settings(bootstrap, names))).snapshot()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _propagation(urls: list[str], n: int, offset_of_write) -> list[float]:
    """For each of ``n`` writes: seconds from before the write until every worker has applied it.

    Each worker is asked with ``GET /control?min_offset=<offset>``, which
    answers as soon as that worker has applied the record (or at once, if it
    already has).
    """
    delays = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def applied(url: str, offset: int) -> None:
            async with session.get(f"{url}/control", params={"min_offset": offset, "timeout_ms": 10000}) as r:
                body = await r.json()
                assert r.status == 200, (url, offset, body)
                assert body["offset"] >= offset

        for i in range(n):
            started = time.perf_counter()
            offset = await offset_of_write(session, i)
            await asyncio.gather(*(applied(url, offset) for url in urls))
            delays.append(time.perf_counter() - started)
    return delays


def test_three_workers_apply_every_entry_whoever_writes_it(worker_factory, names, kafka_bootstrap):
    workers = [worker_factory(f"w{i}") for i in (1, 2, 3)]
    for w in workers:
        w.wait_ready()
    wait_for(lambda: all(get(f"{w.url}/readyz")[0] == 200 for w in workers), 120, "all three workers ready at once")
    oracle = Oracle()
    writer = Writer(kafka_bootstrap, names["control"], oracle)
    urls = [w.url for w in workers]
    try:
        # 100 entries from a plain Kafka producer, one at a time.
        async def by_producer(session, i: int) -> int:
            return await asyncio.get_running_loop().run_in_executor(
                None, writer.write, f"plain.{i % 40}", orjson.dumps({"n": i})
            )

        # (The writer drives its own event loop, so it runs in an executor thread.)
        delays_plain = asyncio.run(_propagation(urls, 100, by_producer))

        # 100 entries through PUT on worker 1.
        async def by_put(session, i: int) -> int:
            key = f"put.{i % 40}"
            async with session.put(f"{workers[0].url}/control/{key}", data=orjson.dumps([i, "x"])) as r:
                body = await r.json()
                assert r.status == 202, body
                assert body["key"] == key
            oracle.wrote(key, orjson.dumps([i, "x"]), body["offset"])
            return body["offset"]

        delays_put = asyncio.run(_propagation(urls, 100, by_put))

        # Deletes, JSON null and a malformed value from the plain producer.
        writer.write("plain.1", None)
        writer.write("plain.2", b"null")
        writer.write("plain.3", MALFORMED)
        status, body = http("DELETE", f"{workers[0].url}/control/put.1")
        assert status == 202, body
        oracle.wrote("put.1", None, body["offset"])
        for w in workers:
            assert_holds(w, oracle)
        assert oracle.entries["plain.3"] == {"n": 83}, "a malformed value leaves the previous value"
        assert "plain.1" not in oracle.entries and "plain.2" not in oracle.entries
        for w in workers:
            metrics = prometheus(w.url)
            assert metrics['projector_control_invalid_total{reason="invalid_json"}'] == 1
            assert metrics["projector_control_records_total"] == oracle.records
        assert topic_table(kafka_bootstrap, names) == control_of(workers[0])

        # commands.enabled and accounts.max_withdrawal take effect on every worker.
        for value, expected in ((False, 0), (True, 1)):
            status, body = http("PUT", f"{workers[1].url}/control/commands.enabled", value)
            assert status == 202, body
            for w in workers:
                wait_for(lambda: prometheus(w.url)["projector_commands_enabled"] == expected, 30,
                         f"{w.name} to read commands.enabled={value}")
        assert http("PUT", f"{workers[2].url}/control/accounts.max_withdrawal", 250)[0] == 202
        for w in workers:
            wait_for(lambda: prometheus(w.url)['projector_control_setting{key="accounts.max_withdrawal"}'] == 250, 30,
                     f"{w.name} to read accounts.max_withdrawal=250")
    finally:
        writer.close()

    delays = delays_plain + delays_put
    assert len(delays) == 200
    report = {
        "entries": len(delays),
        "p50_ms": round(statistics.median(delays) * 1000, 1),
        "p99_ms": round(percentile(delays, 0.99) * 1000, 1),
        "max_ms": round(max(delays) * 1000, 1),
        "p50_plain_producer_ms": round(statistics.median(delays_plain) * 1000, 1),
        "p50_put_ms": round(statistics.median(delays_put) * 1000, 1),
    }
    print(f"\ncontrol propagation to 3 workers: {json.dumps(report)}")


def test_worker_started_after_1000_entries_holds_them_all_before_ready(worker_factory, names, kafka_bootstrap):
    from projector.runtime.topics import ensure_topics

    asyncio.run(ensure_topics(_settings(kafka_bootstrap, names)))  # as an operator would, before any worker
    oracle = Oracle()
    writer = Writer(kafka_bootstrap, names["control"], oracle)
    try:
        for key, value in random_records(random.Random(4), 1000, keys=300):
            writer.write(key, value)
    finally:
        writer.close()
    assert oracle.records == 1000
    worker = worker_factory("late")

    def first_ready() -> Optional[dict]:
        assert worker.alive(), worker.log_tail()
        try:
            status, body = get(f"{worker.url}/readyz", timeout=5)
        except OSError:
            return None
        if status == 503:
            seen_not_ready.append(body)
        return body if status == 200 else None

    seen_not_ready: list[dict] = []
    ready = wait_for(first_ready, 120, "the late worker to turn ready", interval=0.05)
    # At the moment /readyz first said 200, the worker had applied the whole topic.
    assert ready["control"]["offset"] == oracle.last_offset, ready
    assert ready["control"]["target"] == oracle.last_offset + 1, ready
    assert seen_not_ready and all(b["error"] == "not_ready" for b in seen_not_ready)
    body = control_of(worker)
    assert body == {"offset": oracle.last_offset, "entries": oracle.entries}
    metrics = prometheus(worker.url)
    assert metrics["projector_control_records_total"] == 1000


def test_restarted_worker_comes_back_with_an_identical_table(worker_factory, names, kafka_bootstrap):
    admin, api = "admin-secret", "api-secret"
    worker = worker_factory(
        "restarted", extra_env={"PROJECTOR_ADMIN_TOKEN": admin, "PROJECTOR_API_TOKEN": api}
    )
    worker.wait_ready()
    oracle = Oracle()
    writer = Writer(kafka_bootstrap, names["control"], oracle)
    rng = random.Random(7)
    try:
        for key, value in random_records(rng, 150, keys=30):
            writer.write(key, value)
        # Control writes need the admin token; the API token is not enough.
        url = f"{worker.url}/control/through.put"
        assert http("PUT", url, {"a": 1})[0] == 401
        assert http("PUT", url, {"a": 1}, token=api)[0] == 401
        assert http("DELETE", url, token=api)[0] == 401
        status, body = http("PUT", url, {"a": 1}, token=admin)
        assert status == 202 and body["key"] == "through.put", body
        oracle.wrote("through.put", b'{"a": 1}', body["offset"])
        assert http("PUT", f"{worker.url}/control/commands.enabled", "no", token=admin)[0] == 400
        assert get(f"{worker.url}/control")[0] == 401
        assert_holds(worker, oracle, token=api)
        before = control_of(worker, api)

        for how in ("clean shutdown", "kill -9"):
            if how == "kill -9":
                worker.kill9()
            else:
                worker.stop()
            # While it is down: new keys, updates, and deletes of keys it holds.
            held = sorted(oracle.entries)
            for key in held[:5]:
                writer.write(key, None)
            writer.write(held[5], b"null")
            for key, value in random_records(rng, 40, keys=30):
                writer.write(key, value)
            worker.start()
            worker.wait_ready()
            assert_holds(worker, oracle, token=api)
            after = control_of(worker, api)
            assert after["entries"] == oracle.entries, how
            assert not set(held[:6]) & set(after["entries"]) - set(oracle.entries), how
            assert after != before
            before = after
    finally:
        writer.close()
    assert topic_table(kafka_bootstrap, names) == control_of(worker, api)


def test_two_workers_miss_no_entry_through_five_rebalances(worker_factory, names, kafka_bootstrap):
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    w1.wait_ready()
    w2.wait_ready()
    oracle = Oracle()
    stop = threading.Event()
    failure: list[BaseException] = []

    def keep_writing() -> None:
        writer = Writer(kafka_bootstrap, names["control"], oracle)
        rng = random.Random(9)
        try:
            while not stop.is_set():
                for key, value in random_records(rng, 5, keys=200):
                    writer.write(key, value)
                stop.wait(0.05)
        except BaseException as exc:
            failure.append(exc)
        finally:
            writer.close()

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        w3 = worker_factory("w3")
        w4 = worker_factory("w4", start=False)

        def settled(what: str, running: list) -> None:
            for w in running:
                w.wait_ready(timeout=180)
            wait_for(lambda: all(get(f"{w.url}/readyz")[0] == 200 for w in running), 180, f"all ready after {what}")

        settled("w3 joined", [w1, w2, w3])  # rebalance 1
        w4.start()
        settled("w4 joined", [w1, w2, w3, w4])  # rebalance 2
        w3.stop()
        settled("w3 left", [w1, w2, w4])  # rebalance 3
        w4.kill9()
        # The group notices a killed member when its session times out.
        wait_for(lambda: get(f"{w1.url}/readyz")[0] == 503, 60, "the group to notice w4 is gone", interval=0.1)
        settled("w4 killed", [w1, w2])  # rebalance 4
        w3.start()
        settled("w3 rejoined", [w1, w2, w3])  # rebalance 5
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failure, failure
    assert oracle.records > 100
    for w in (w1, w2):
        assert_holds(w, oracle)
        # Each record applied exactly once: nothing missed, nothing re-applied after a rebalance.
        metrics = prometheus(w.url)
        assert metrics["projector_control_records_total"] == oracle.records
        # Offsets a worker skipped and found again by re-reading (Faust dropped the record on the way).
        print(f"\n{w.name}: {int(metrics['projector_control_gaps_total'])} gaps, "
              f"{int(metrics['projector_control_filled_total'])} records filled in late")
    assert control_of(w1) == control_of(w2) == topic_table(kafka_bootstrap, names)


def test_a_transactional_writer_does_not_stall_the_worker(worker_factory, names, kafka_bootstrap):
    """Commit markers take offsets but are never delivered: the control topic then ends on a non-record."""
    from projector.runtime.topics import ensure_topics

    asyncio.run(ensure_topics(_settings(kafka_bootstrap, names)))
    oracle = Oracle()

    async def write_in_transactions(batches: list[list[tuple[str, bytes]]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{names['app_id']}-tx")
        await producer.start()
        try:
            for batch in batches:
                async with producer.transaction():
                    metas = [await producer.send_and_wait(names["control"], key=k.encode(), value=v) for k, v in batch]
                for (k, v), meta in zip(batch, metas):
                    oracle.wrote(k, v, meta.offset)
        finally:
            await producer.stop()

    asyncio.run(write_in_transactions([[("tx.a", b"1"), ("tx.b", b'"two"')], [("tx.c", b"[3]")]]))
    worker = worker_factory("tx")
    worker.wait_ready(timeout=120)
    assert control_of(worker)["entries"] == oracle.entries == {"tx.a": 1, "tx.b": "two", "tx.c": [3]}
    # Live transactional writes are applied too.
    asyncio.run(write_in_transactions([[("tx.a", b"10"), ("tx.d", b"null")]]))
    wait_for(lambda: control_of(worker)["entries"] == oracle.entries, 30, "the live transactional write")
    # And a restart over a topic that ends on a marker comes back ready.
    worker.stop()
    worker.start()
    worker.wait_ready(timeout=120)
    body = control_of(worker)
    assert body["entries"] == oracle.entries
    # The offset applied may count the commit marker after the last record.
    assert oracle.last_offset <= body["offset"] <= oracle.last_offset + 1
