"""Topics on a broker with Kafka's default settings (``auto.create.topics.enable=true``).

A worker never lets the broker create a topic for it, uses an events topic
that exists as it is (derived topics follow its partition count), and stops
with the fix when an existing topic cannot serve, before it creates any.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from support import fold_accounts, get, produce, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration


async def _describe(bootstrap: str, names: list[str]) -> dict[str, tuple[int, str]]:
    """(partitions, cleanup.policy) of each existing topic among ``names``, asking in a way that creates none."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.protocol.metadata import MetadataRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        metadata = await admin._send_request(MetadataRequest(names, allow_auto_topic_creation=False))
        counts = {t[1]: len(t[3]) for t in metadata.topics if t[0] == 0}
        if not counts:
            return {}
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in counts])
        policy = {r[3]: dict((e[0], e[1]) for e in r[4]).get("cleanup.policy") for c in configs for r in c.resources}
        return {name: (n, policy[name]) for name, n in counts.items()}
    finally:
        await admin.close()


async def _let_the_broker_create(bootstrap: str, names: list[str]) -> None:
    """What a producer with Kafka's defaults does for a missing topic: a metadata request that may create it."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.metadata import MetadataRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for _ in range(50):
            metadata = await admin._send_request(MetadataRequest(names, allow_auto_topic_creation=True))
            if all(t[0] == 0 and t[3] for t in metadata.topics):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the broker did not create {names}: {metadata.topics}")
    finally:
        await admin.close()


def test_an_events_topic_with_12_partitions_is_used_as_it_is(worker_factory, names, kafka_bootstrap):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(names["events"], 12, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    w = worker_factory("w12", partitions=4)  # PROJECTOR_PARTITIONS=4 only applies to a topic projector creates
    w.wait_ready()
    histories = list(generate_histories(120, 1500, seed=31))
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories])
    expected = {k: r["version"] for k, r in fold_accounts(histories).items()}

    def versions() -> dict:
        status, body = get(f"{w.url}/tables/accounts?limit=1000")
        return {r["key"]: r["version"] for r in body["rows"]} if status == 200 else {}

    wait_for(lambda: versions() == expected, 120, "the fold of a 12-partition topic")
    assert get(f"{w.url}/status")[1]["partitions"] == list(range(12))
    app = names["app_id"]
    derived = [f"{app}-commands", f"{app}-engine-commands", f"{app}-owners-repartition",
               f"{app}-accounts-changelog", f"{app}-_index-changelog"]
    topics = asyncio.run(_describe(kafka_bootstrap, [names["events"], *derived]))
    assert {name: n for name, (n, _) in topics.items()} == {name: 12 for name in [names["events"], *derived]}
    assert topics[f"{app}-accounts-changelog"][1] == "compact"
    log = w.log_path.read_text(errors="replace")
    assert f"using topic {names['events']}: 12 partitions" in log, log[:3000]
    assert f"created topic {app}-commands: 12 partitions" in log


def test_topics_the_broker_created_are_used_or_refused_with_the_fix(worker_factory, names, kafka_bootstrap):
    """A producer with Kafka's defaults made the events and control topics: 1 partition, cleanup.policy=delete."""
    asyncio.run(_let_the_broker_create(kafka_bootstrap, [names["events"], names["control"]]))
    before = asyncio.run(_describe(kafka_bootstrap, [names["events"], names["control"]]))
    assert before == {names["events"]: (1, "delete"), names["control"]: (1, "delete")}, before
    w = worker_factory("auto", partitions=4)
    assert w.proc.wait(timeout=60) != 0, w.log_tail()
    log = w.log_path.read_text(errors="replace")
    control = names["control"]
    assert f"topic {control!r} must be compacted" in log, log[-3000:]
    assert f"--alter --entity-type topics --entity-name {control} --add-config cleanup.policy=compact" in log
    # The worker stopped before creating anything, and altered nothing.
    app = names["app_id"]
    assert asyncio.run(_describe(kafka_bootstrap, [f"{app}-commands", f"{app}-accounts-changelog",
                                                  f"{names['events']}.deadletter"])) == {}
    assert asyncio.run(_describe(kafka_bootstrap, [names["events"], control])) == before

    # Fixed as the error says, the worker uses the one-partition events topic as it is.
    async def compact() -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, control,
                                                      {"cleanup.policy": "compact"})])
        finally:
            await admin.close()

    asyncio.run(compact())
    w.start()
    w.wait_ready()
    assert get(f"{w.url}/status")[1]["partitions"] == [0]
    assert asyncio.run(_describe(kafka_bootstrap, [f"{app}-commands"])) == {f"{app}-commands": (1, "delete")}
