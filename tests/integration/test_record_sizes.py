"""Big events on real Kafka: no record the worker writes is over what its topics take, and it keeps folding.

The events topic is made here with ``max.message.bytes`` of 6 MiB, so it takes
events of about 900 KB and one of 5 MB; the worker's own topics (changelogs,
dead letters) keep Kafka's default of 1 MiB. Events of 900 KB are applied and
served, a composite of three of them too, a 900 KB event after a gap is
parked and released; the 5 MB event cannot be indexed: it is dead-lettered
by reference (empty value, ``projector.truncated``, ``projector.source``)
and not applied. Every other aggregate, in its partition or not, keeps
flowing, and the worker stays ready.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from support import get, http, prometheus, read_topic, wait_for

from projector.core.partitioning import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
BIG = 900_000
HUGE = 5_000_000


async def _create_events_topic(bootstrap: str, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1, topic_configs={
            "max.message.bytes": str(6 * 1024 * 1024), "retention.ms": "-1", "retention.bytes": "-1"})])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """Produce in order (up to 8 MiB a record); returns each record's (partition, offset)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        metas = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()


def envelope(aid: str, version: int, type_: str, data: dict, pad: int = 0) -> dict:
    if pad:
        data = {**data, "memo": "m" * pad}
    return {"id": f"{aid}/{version}", "aggregate_id": aid, "aggregate_type": "account", "type": type_,
            "version": version, "data": data}


def opened(aid: str) -> dict:
    return envelope(aid, 1, "AccountOpened", {"owner": f"owner-{aid}", "currency": "EUR"})


def deposit(aid: str, version: int, amount: int, pad: int = 0) -> dict:
    return envelope(aid, version, "MoneyDeposited", {"amount": amount}, pad)


def same_partition_as(key: str, count: int) -> list[str]:
    target = partition_for(key.encode(), PARTITIONS)
    out = [f"acc-small-{i}" for i in range(100) if partition_for(f"acc-small-{i}".encode(), PARTITIONS) == target]
    return out[:count]


def test_big_events_are_stored_or_dead_lettered_by_reference_and_the_worker_keeps_folding(
        worker_factory, names, kafka_bootstrap):
    asyncio.run(_create_events_topic(kafka_bootstrap, names["events"]))
    worker = worker_factory(partitions=PARTITIONS)
    worker.wait_ready()

    neighbours = same_partition_as("acc-huge", 3)  # in the 5 MB event's partition
    others = [f"acc-other-{i}" for i in range(4)]
    records: list[dict | list] = [
        opened("acc-big"), deposit("acc-big", 2, 10, pad=BIG), deposit("acc-big", 3, 1),
        # A composite of three 900 KB events: 2.7 MB in one record of the events topic.
        [deposit("acc-big", v, 1, pad=BIG) for v in (4, 5, 6)],
        opened("acc-gap"), deposit("acc-gap", 3, 7, pad=BIG),  # a gap: parked, with its 900 KB
        opened("acc-huge"), deposit("acc-huge", 2, 5, pad=HUGE), deposit("acc-huge", 3, 1),
    ]
    for aid in neighbours + others:
        records += [opened(aid), deposit(aid, 2, 3), deposit(aid, 3, 4)]
    encoded = [(r[0]["aggregate_id"] if isinstance(r, list) else r["aggregate_id"], orjson.dumps(r)) for r in records]
    positions = asyncio.run(_produce(kafka_bootstrap, names["events"], [(k.encode(), v) for k, v in encoded]))
    huge_index = next(i for i, r in enumerate(records) if isinstance(r, dict) and r["aggregate_id"] == "acc-huge"
                      and r["version"] == 2)
    huge_partition, huge_offset = positions[huge_index]

    def row(aid: str) -> dict | None:
        status, body = get(f"{worker.url}/tables/accounts/{aid}")
        return body if status == 200 else None

    # Every small aggregate, in the 5 MB event's partition and out of it, is applied to its end.
    for aid in neighbours + others:
        wait_for(lambda aid=aid: (row(aid) or {}).get("version") == 3, 180, f"{aid} at version 3")
        assert row(aid)["value"]["balance"] == 7
    # The 900 KB events are applied and served from the index.
    wait_for(lambda: (row("acc-big") or {}).get("version") == 6, 180, "acc-big at version 6")
    assert row("acc-big")["value"]["balance"] == 14
    status, body = get(f"{worker.url}/aggregates/acc-big/events?from_version=1&limit=10")
    assert status == 200 and [e["version"] for e in body["events"]] == [1, 2, 3, 4, 5, 6]
    assert len(body["events"][1]["data"]["memo"]) == BIG and len(body["events"][5]["data"]["memo"]) == BIG
    # The 5 MB event is not applied: acc-huge stays at version 1.
    wait_for(lambda: row("acc-huge") is not None, 60, "acc-huge opened")
    assert row("acc-huge")["version"] == 1

    def deadletters() -> dict[tuple[str, str], object]:
        out = {}
        for r in read_topic(kafka_bootstrap, f"{names['events']}.deadletter"):
            h = {k: v.decode() for k, v in r.headers}
            out[(r.key.decode(), h["projector.reason"])] = (r, h)
        return out

    wanted = {("acc-huge", "too_large"), ("acc-huge", "version_gap"), ("acc-gap", "version_gap")}
    dls = wait_for(lambda: (lambda d: d if wanted <= set(d) else None)(deadletters()), 120, f"dead letters {wanted}")
    assert set(dls) == wanted
    huge, h = dls[("acc-huge", "too_large")]
    assert huge.value in (b"", None), "the 5 MB value is left out"
    assert int(h["projector.truncated"]) == len(encoded[huge_index][1])
    assert h["projector.source"] == f"{names['events']}/{huge_partition}/{huge_offset}"
    gap, h = dls[("acc-gap", "version_gap")]
    assert orjson.loads(gap.value)["version"] == 3 and "projector.truncated" not in h, "a 900 KB dead letter is whole"

    # The parked 900 KB event is released and applied.
    status, _ = http("POST", f"{worker.url}/aggregates/acc-gap/release", {"skip_to": 3})
    assert status in (200, 202), status
    wait_for(lambda: (row("acc-gap") or {}).get("version") == 3, 120, "acc-gap released to version 3")
    assert row("acc-gap")["value"]["balance"] == 7

    # The worker never stopped and is ready; later events still flow.
    assert worker.alive()
    assert get(f"{worker.url}/readyz")[0] == 200
    asyncio.run(_produce(kafka_bootstrap, names["events"], [(b"acc-other-0", orjson.dumps(deposit("acc-other-0", 4, 1)))]))
    wait_for(lambda: (row("acc-other-0") or {}).get("version") == 4, 120, "a later event applied")
    assert prometheus(worker.url)['projector_deadletter_total{reason="too_large"}'] == 1
    assert get(f"{worker.url}/readyz")[0] == 200
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "MessageSizeTooLarge" not in log, worker.log_tail(60)
