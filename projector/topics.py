"""Creating and inspecting projector's topics with the Kafka admin API."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from projector.config import Settings

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """A topic could not be created or has an unusable shape."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def commands_topic_name(settings: Settings) -> str:
    """Engine commands (releases), co-partitioned with the events topic."""
    return f"{settings.app_id}-engine-commands"


def command_topic_name(settings: Settings) -> str:
    """Commands of ``POST /commands``, keyed by aggregate id, co-partitioned with the events topic."""
    return f"{settings.app_id}-commands"


def repartition_topic_name(settings: Settings, model: str) -> str:
    return f"{settings.app_id}-{model}-repartition"


def projector_topics(settings: Settings, derived: list[str] = (), partitions: int | None = None) -> list[TopicSpec]:
    """The topics a worker needs before Faust starts (Faust creates the changelogs).

    ``partitions`` is the events topic's real partition count, which the
    internal topics must share to be co-partitioned with it.
    """
    forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    n = partitions or settings.partitions
    specs = [
        # The event store: never expire events.
        TopicSpec(settings.events_topic, settings.partitions, forever),
        TopicSpec(settings.control_topic, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.deadletter_topic, 1, forever),
    ]
    if partitions is not None:
        specs.append(TopicSpec(commands_topic_name(settings), n))
        specs.append(TopicSpec(command_topic_name(settings), n))
        specs.extend(TopicSpec(repartition_topic_name(settings, name), n) for name in derived)
    return specs


async def connect_admin(settings: Settings, timeout: float = 60.0) -> AIOKafkaAdminClient:
    """An admin client, retrying until the broker answers or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=",".join(settings.bootstrap_servers),
            client_id=f"{settings.app_id}-admin",
            request_timeout_ms=15000,
        )
        try:
            await admin.start()
            return admin
        except KafkaConnectionError as exc:
            await admin.close()
            if time.monotonic() > deadline:
                raise TopicError(
                    f"cannot reach Kafka at {settings.broker} after {timeout:.0f}s: {exc}. "
                    "Is the broker running? (deploy/kafka/kafka.sh start)"
                ) from exc
            await asyncio.sleep(1.0)


async def resolve_replication(settings: Settings) -> Settings:
    """Settings with the replication factor and min.insync.replicas this cluster gets.

    Unless PROJECTOR_REPLICATION_FACTOR is set, the factor is min(3, brokers):
    1 on a laptop's single broker, 3 on a cluster. min.insync.replicas is
    PROJECTOR_MIN_INSYNC_REPLICAS, else 2 once the factor is 3 or more (with
    acks=all a write then survives one broker lost), else 1.
    """
    admin = await connect_admin(settings)
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()
    factor = min(3, brokers) if settings.replication_auto else settings.replication_factor
    if factor > brokers:
        raise TopicError(
            f"PROJECTOR_REPLICATION_FACTOR is {factor}, but the cluster at {settings.broker} has {brokers} "
            f"broker{'s' if brokers != 1 else ''}"
        )
    insync = settings.min_insync_replicas or (2 if factor >= 3 else 1)
    if insync > factor:
        raise TopicError(f"PROJECTOR_MIN_INSYNC_REPLICAS is {insync}, above the replication factor {factor}")
    log.info("%d broker(s): topics get replication factor %d, min.insync.replicas %d", brokers, factor, insync)
    return dataclasses.replace(settings, replication_factor=factor, replication_auto=False,
                               min_insync_replicas=insync)


def replication_configs(settings: Settings) -> dict[str, str]:
    """Topic configs for the replication settings (nothing to add on a single broker)."""
    insync = settings.min_insync_replicas or 1
    return {"min.insync.replicas": str(insync)} if insync > 1 else {}


def changelog_topic_name(settings: Settings, table: str) -> str:
    """The changelog Faust keeps for ``table``."""
    return f"{settings.app_id}-{table}-changelog"


async def check_compacted(settings: Settings, names: list[str]) -> None:
    """Refuse topics among ``names`` that exist but are not compacted.

    A changelog (or the control topic) that deletes old records by time or
    size loses the only copy of rows that have not changed since: a worker
    that restores from it rebuilds tables with rows missing.
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = await connect_admin(settings)
    try:
        existing = await describe_partitions(admin, names)
        if not existing:
            return
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in sorted(existing)])
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()
    bad = []
    for response in responses:
        for resource in response.resources:
            configs = {entry[0]: entry[1] for entry in resource[4]}
            policy = configs.get("cleanup.policy") or ""
            if "compact" not in policy.split(","):
                bad.append(f"{resource[3]} (cleanup.policy={policy or '?'})")
    if bad:
        raise TopicError(
            "these topics must be compacted, or a restore from them loses rows: " + ", ".join(sorted(bad))
            + ". Fix each with: kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics "
            "--entity-name <topic> --add-config cleanup.policy=compact"
        )


async def describe_partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics among ``names`` that exist."""
    out = {}
    for topic in await admin.describe_topics(names):
        if topic["error_code"] == 0:
            out[topic["topic"]] = len(topic["partitions"])
    return out


async def existing_topics(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics among ``names`` that exist."""
    admin = await connect_admin(settings)
    try:
        return await describe_partitions(admin, names)
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> dict[str, int]:
    """Create the missing topics of ``specs``; return each topic's partition count."""
    specs = projector_topics(settings) if specs is None else specs
    admin = await connect_admin(settings)
    try:
        names = [s.name for s in specs]
        existing = await describe_partitions(admin, names)
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, settings.replication_factor,
                             topic_configs={**replication_configs(settings), **s.config})
                    for s in missing
                ]
            )
            for name, code, message in _topic_errors(response):
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise TopicError(f"creating topic {name!r} failed: error {code} {message or ''}".strip())
            for s in missing:
                log.info("created topic %s (%d partitions)", s.name, s.partitions)
        # Metadata can lag creation for a moment; wait until every topic is visible.
        deadline = time.monotonic() + 30
        while True:
            existing = await describe_partitions(admin, names)
            if len(existing) == len(names):
                break
            if time.monotonic() > deadline:
                raise TopicError(f"topics {sorted(set(names) - set(existing))} not visible after creation")
            await asyncio.sleep(0.2)
        control = next((s for s in specs if s.name == settings.control_topic), None)
        if control and existing[control.name] != 1:
            raise TopicError(
                f"control topic {control.name!r} has {existing[control.name]} partitions; it must have exactly 1"
            )
        return existing
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()


def _topic_errors(response) -> list[tuple[str, int, str]]:
    obj = response.to_object()
    rows = obj.get("topic_errors") or obj.get("topics") or []
    return [(r.get("topic") or r.get("name"), r["error_code"], r.get("error_message")) for r in rows]
