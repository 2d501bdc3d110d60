"""The writer's catch-up gate on real Kafka, and command ids kept for PROJECTOR_COMMAND_ID_TTL.

- An events partition that ends on a transaction's commit marker (an outside
  transactional producer wrote the last event) holds an offset that is never
  delivered: the writer is caught up once its position has passed it.
- A command that arrives while its writer catches up waits for the gate: it
  is on the command topic once, not sent again and again.
- An answer is kept for the TTL; after it, the same command id is a new command.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from support import http, prometheus, read_topic, wait_for

from projector.core.partitioning import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 2


def _opened(aid: str) -> bytes:
    return orjson.dumps({"id": f"{aid}:1", "aggregate_id": aid, "aggregate_type": "account",
                         "type": "AccountOpened", "version": 1, "data": {"owner": "ann", "currency": "EUR"}})


async def _produce_in_a_transaction(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                                    transactional_id: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await producer.start()
    try:
        async with producer.transaction():
            for key, value in records:
                await producer.send(topic, key=key, value=value, partition=partition_for(key, PARTITIONS))
    finally:
        await producer.stop()


def _deposit(aid: str, cid: str) -> dict:
    return {"command_id": cid, "aggregate_type": "account", "aggregate_id": aid, "type": "Deposit",
            "data": {"amount": 10}}


def test_a_partition_that_ends_on_a_commit_marker_takes_commands_each_sent_once(worker_factory, names,
                                                                              kafka_bootstrap):
    w = worker_factory("w", partitions=PARTITIONS)
    w.wait_ready()
    aid = "acc-tx"
    # The partition's last offset is now the transaction's commit marker.
    asyncio.run(_produce_in_a_transaction(kafka_bootstrap, names["events"], [(aid.encode(), _opened(aid))],
                                          f"{names['app_id']}-outside"))
    wait_for(lambda: http("GET", f"{w.url}/tables/accounts/{aid}")[0] == 200, 60, "the account to be folded")
    status, body = http("POST", f"{w.url}/commands?timeout_ms=20000", _deposit(aid, "first"), timeout=60)
    assert (status, body.get("version")) == (200, 2), body
    # The command waited for the gate in the writer: it is on the command topic once.
    commands = [orjson.loads(r.value)["command"]["command_id"]
                for r in read_topic(kafka_bootstrap, f"{names['app_id']}-commands")]
    assert commands == ["first"], commands


def test_an_answer_is_kept_for_the_ttl_and_the_id_is_a_new_command_after_it(worker_factory, names, kafka_bootstrap):
    w = worker_factory("w", partitions=PARTITIONS, extra_env={"PROJECTOR_COMMAND_ID_TTL": "5s"})
    w.wait_ready()
    aid = "acc-ttl"

    def decided(command: dict) -> dict:
        def once() -> dict | None:
            status, body = http("POST", f"{w.url}/commands?timeout_ms=20000", command, timeout=60)
            assert status in (200, 503, 504), body
            return body if status == 200 else None

        return wait_for(once, 60, f"{command['command_id']} to be decided")

    decided({"command_id": "open", "aggregate_type": "account", "aggregate_id": aid, "type": "OpenAccount",
             "data": {"owner": "ann", "currency": "EUR"}})
    first = decided(_deposit(aid, "dep"))
    assert first["version"] == 2
    sent_at = time.monotonic()
    again = decided(_deposit(aid, "dep"))
    if time.monotonic() - sent_at < 4:  # within the TTL (the broker's clock stamps the answer)
        assert again == first

    def applied_again() -> dict | None:
        body = decided(_deposit(aid, "dep"))
        return body if body["version"] != first["version"] else None

    later = wait_for(applied_again, 60, "the answer to be pruned after its TTL", interval=1)
    assert later["version"] == 3
    assert prometheus(w.url).get('projector_commands_total{outcome="pruned"}', 0) >= 1
