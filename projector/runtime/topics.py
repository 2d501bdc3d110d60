"""projector's topics: which it needs, creating the missing ones, and refusing those that cannot serve.

Nothing here asks about a topic in a way that creates it (see
:mod:`projector.runtime.kafka`): on a broker with ``auto.create.topics.enable=true``
a worker behaves as on one without. The events topic, when it exists, is used
as it is; every topic derived from it (the command topics, repartition topics
and changelogs) has its partition count. A topic that exists but cannot serve
stops the worker with an error naming it and the fix; projector never alters
or deletes a topic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from projector.core.engine import MAX_RECORD_BYTES
from projector.runtime.config import Settings
from projector.runtime.errors import BrokerError, TopicError
from projector.runtime.kafka import (
    TopicInfo,
    acl_command,
    client_options,
    describe_topics,
    group_operations,
    principal,
    wait_for_broker,
)

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
TOPIC_AUTHORIZATION_FAILED = 29
UNKNOWN_TOPIC_OR_PARTITION = 3
#: How long a worker waits at start for a broker to answer before it stops (within 60 s in all).
STARTUP_TIMEOUT = 30.0
#: What a worker does on each of its topics, and on its consumer group.
TOPIC_OPERATIONS = frozenset({"DESCRIBE", "DESCRIBE_CONFIGS", "READ", "WRITE"})
GROUP_OPERATIONS = frozenset({"READ"})


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    #: A changelog or the control topic: must be compacted, or a restore from it loses rows.
    compacted: bool = False
    #: Derived from the events topic: must have its partition count.
    co_partitioned: bool = False


def release_topic_name(settings: Settings) -> str:
    """Release requests for parked aggregates (``POST /aggregates/{id}/release``), co-partitioned with the events topic."""
    return f"{settings.app_id}-engine-commands"


def command_topic_name(settings: Settings) -> str:
    """Commands of ``POST /commands``, keyed by aggregate id, co-partitioned with the events topic."""
    return f"{settings.app_id}-commands"


def repartition_topic_name(settings: Settings, model: str) -> str:
    return f"{settings.app_id}-{model}-repartition"


def changelog_topic_name(settings: Settings, table: str) -> str:
    """The changelog Faust keeps for ``table``."""
    return f"{settings.app_id}-{table}-changelog"


def base_topics(settings: Settings) -> list[TopicSpec]:
    """The topics every projector client may create: events, control, dead letters."""
    forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    return [
        # The event store: never expire events.
        TopicSpec(settings.events_topic, settings.partitions, forever),
        TopicSpec(settings.control_topic, 1, {"cleanup.policy": "compact"}, compacted=True),
        TopicSpec(settings.deadletter_topic, 1, forever),
    ]


def worker_topics(settings: Settings, partitions: int, derived: Iterable[str] = (),
                  tables: Iterable[str] = ()) -> list[TopicSpec]:
    """Every topic a worker uses, the derived ones with the events topic's real ``partitions``.

    ``derived`` names the re-keyed read models (a repartition topic each),
    ``tables`` every table with a changelog. projector creates the changelogs
    itself, as Faust would (compacted, the table's partitions), so that what
    the log says was created is what was created.
    """
    specs = [dataclasses.replace(s, partitions=partitions) if s.name == settings.events_topic else s
             for s in base_topics(settings)]
    specs.append(TopicSpec(release_topic_name(settings), partitions, co_partitioned=True))
    specs.append(TopicSpec(command_topic_name(settings), partitions, co_partitioned=True))
    specs.extend(TopicSpec(repartition_topic_name(settings, name), partitions, co_partitioned=True)
                 for name in derived)
    specs.extend(TopicSpec(changelog_topic_name(settings, table), partitions, {"cleanup.policy": "compact"},
                           compacted=True, co_partitioned=True) for table in tables)
    return specs


async def connect_admin(settings: Settings, timeout: float = STARTUP_TIMEOUT) -> AIOKafkaAdminClient:
    """An admin client, once a broker answers (:class:`~projector.runtime.kafka.BrokerError` if none does in time)."""
    await wait_for_broker(settings, time.monotonic() + timeout)
    admin = AIOKafkaAdminClient(client_id=f"{settings.app_id}-admin", request_timeout_ms=15000,
                                **client_options(settings))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise BrokerError("unreachable", f"cannot reach Kafka at {settings.broker}: {exc}") from exc
    return admin


async def _replication(admin: AIOKafkaAdminClient, settings: Settings) -> Settings:
    """Settings with the replication factor and min.insync.replicas this cluster gets.

    Unless PROJECTOR_REPLICATION_FACTOR is set, the factor is min(3, brokers):
    1 on a laptop's single broker, 3 on a cluster. min.insync.replicas is
    PROJECTOR_MIN_INSYNC_REPLICAS, else 2 once the factor is 3 or more (with
    acks=all a write then survives one broker lost), else 1.
    """
    brokers = len((await admin.describe_cluster())["brokers"])
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


#: What a batch and its one record take besides the record's key, value and headers, with room to spare.
BATCH_FRAMING = 8192


def record_limit(settings: Settings, specs: Iterable[TopicSpec], configs: dict[str, dict[str, str]]) -> Settings:
    """Settings whose ``max_record_bytes`` fits every topic a worker writes records of its own to.

    :data:`~projector.core.engine.MAX_RECORD_BYTES` (Kafka's and the
    producer's defaults), lowered to a topic's ``max.message.bytes`` (less the
    batch's framing) where one takes less. The events and control topics are
    left out: the worker writes there only what a client sent. A topic whose
    configs this principal may not read keeps the default.
    """
    limit, tightest = MAX_RECORD_BYTES, None
    for spec in specs:
        if spec.name in (settings.events_topic, settings.control_topic):
            continue
        raw = configs.get(spec.name, {}).get("max.message.bytes")
        try:
            allowed = int(raw) - BATCH_FRAMING if raw is not None else limit
        except ValueError:
            continue
        if allowed < limit:
            limit, tightest = max(allowed, 1024), spec.name
    if tightest is not None:
        log.warning("topic %s takes records of at most %s bytes (max.message.bytes): a record projector writes is "
                    "kept under %d bytes", tightest, configs[tightest]["max.message.bytes"], limit)
    return dataclasses.replace(settings, max_record_bytes=limit)


def retention_warning(settings: Settings, configs: dict[str, str]) -> Optional[str]:
    """What the events topic's retention would delete (None: it keeps every event, as an event store must)."""
    problems = []
    for name in ("retention.ms", "retention.bytes"):
        value = configs.get(name)
        if value is not None and value.strip() != "-1":
            problems.append(f"{name}={value}")
    if not problems:
        return None
    return (f"the events topic {settings.events_topic} deletes events ({', '.join(problems)}): an event store keeps "
            f"them, and a new read-model version is built from the topic's first record. Keep them with "
            f"kafka-configs.sh --alter --entity-type topics --entity-name {settings.events_topic} "
            f"--add-config retention.ms=-1,retention.bytes=-1")


def replication_configs(settings: Settings) -> dict[str, str]:
    """Topic configs for the replication settings (nothing to add on a single broker)."""
    insync = settings.min_insync_replicas or 1
    return {"min.insync.replicas": str(insync)} if insync > 1 else {}


async def _create_missing(
    admin: AIOKafkaAdminClient, settings: Settings, specs: list[TopicSpec], infos: dict, access: "_Access"
) -> list[str]:
    """Create the topics of ``specs`` that do not exist yet; a creation refused for want of CREATE joins ``access``'s report."""
    created, refused = await _create(admin, settings, [s for s in specs if not infos[s.name].exists])
    for name in refused:
        access.need("topic", name, {"CREATE"}, infos[name].allowed or frozenset())
    access.check()
    return created


async def _create(admin: AIOKafkaAdminClient, settings: Settings, specs: list[TopicSpec]) -> tuple[list[str], list[str]]:
    """Create ``specs``; returns (created, refused for lack of the CREATE permission)."""
    if not specs:
        return [], []
    response = await admin.create_topics([
        NewTopic(s.name, s.partitions, settings.replication_factor,
                 topic_configs={**replication_configs(settings), **s.config})
        for s in specs
    ])
    created, refused = [], []
    for name, code, message in _topic_errors(response):
        if code == 0:
            created.append(name)
        elif code == TOPIC_AUTHORIZATION_FAILED:
            refused.append(name)
        elif code != TOPIC_ALREADY_EXISTS:  # made meanwhile by another worker: checked like any existing one
            raise TopicError(f"creating topic {name!r} failed: error {code} {message or ''}".strip())
    return created, refused


async def _wait_visible(admin: AIOKafkaAdminClient, names: list[str], deadline: float) -> dict[str, TopicInfo]:
    """Metadata can lag creation for a moment: describe ``names`` until every one exists."""
    while True:
        infos = await describe_topics(admin, names)
        missing = [n for n, info in infos.items() if not info.exists]
        if not missing:
            return infos
        if time.monotonic() > deadline:
            raise TopicError(f"topics {missing} not visible after creation")
        await asyncio.sleep(0.2)


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Each topic's configs in effect; and the topics whose configs this principal may not describe."""
    if not names:
        return {}, []
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    out: dict[str, dict[str, str]] = {}
    refused: list[str] = []
    for response in responses:
        for resource in response.resources:
            code, name = resource[0], resource[3]
            if code == TOPIC_AUTHORIZATION_FAILED:
                refused.append(name)
            elif code == 0:
                out[name] = {entry[0]: entry[1] for entry in resource[4]}
            else:
                raise TopicError(f"describing the configs of topic {name!r} failed: error {code} {resource[1] or ''}")
    return out, refused


def _summary(info: TopicInfo, configs: dict[str, str]) -> str:
    shown = [f"{info.partitions} partition{'s' if info.partitions != 1 else ''}",
             f"replication factor {info.replication}"]
    for key in ("cleanup.policy", "retention.ms", "retention.bytes", "min.insync.replicas"):
        if key in configs:
            shown.append(f"{key}={configs[key]}")
    return ", ".join(shown)


def _shape_problems(settings: Settings, specs: list[TopicSpec], infos: dict[str, TopicInfo],
                    configs: dict[str, dict[str, str]], partitions: int) -> list[str]:
    """Why existing topics cannot serve, each with its fix."""
    bootstrap = settings.bootstrap_servers[0]
    problems = []
    for spec in specs:
        info = infos.get(spec.name)
        if info is None or not info.exists:
            continue
        if spec.name == settings.control_topic and info.partitions != 1:
            problems.append(
                f"the control topic {spec.name!r} has {info.partitions} partitions; it must have exactly 1, so that "
                "every worker reads it whole and in order. Point PROJECTOR_CONTROL_TOPIC at a topic that does not "
                "exist yet (projector creates it), or recreate this one with 1 partition and cleanup.policy=compact")
        elif spec.co_partitioned and info.partitions != partitions:
            problems.append(
                f"topic {spec.name!r} has {info.partitions} partitions, but the events topic "
                f"{settings.events_topic!r} has {partitions}: a topic derived from the events topic must have as "
                "many. It was made for another events topic, or with another PROJECTOR_PARTITIONS. Use a new "
                "PROJECTOR_APP_ID (its read models are built from the events topic), or, to rebuild this app's "
                f"read models, delete it: kafka-topics.sh --bootstrap-server {bootstrap} --delete --topic {spec.name}")
        if spec.compacted and spec.name in configs:
            policy = configs[spec.name].get("cleanup.policy") or ""
            if "compact" not in policy.split(","):
                problems.append(
                    f"topic {spec.name!r} must be compacted, or a restore from it loses rows "
                    f"(cleanup.policy={policy or '?'}). Fix it with: kafka-configs.sh --bootstrap-server {bootstrap} "
                    f"--alter --entity-type topics --entity-name {spec.name} --add-config cleanup.policy=compact")
    return problems


class _Access:
    """What this worker's principal lacks, gathered over the start-up checks, as one error."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.missing: dict[tuple[str, str], set[str]] = {}
        self.allowed: dict[tuple[str, str], Optional[frozenset[str]]] = {}

    def need(self, kind: str, name: str, needed: Iterable[str], allowed: Optional[frozenset[str]]) -> None:
        """``needed`` on a resource, of which ``allowed`` is allowed (None: the broker did not say)."""
        self.allowed[(kind, name)] = allowed
        lacking = set(needed) - allowed if allowed is not None else set()
        if lacking:
            self.missing.setdefault((kind, name), set()).update(lacking)

    def need_described(self, infos: dict[str, TopicInfo]) -> None:
        """DESCRIBE on each topic of ``infos`` the broker hid: whether it exists is unknown."""
        for info in infos.values():
            if info.hidden:
                self.need("topic", info.name, {"DESCRIBE"}, frozenset())

    def check(self) -> None:
        """Raise the error naming every missing operation, if any."""
        if not self.missing:
            return
        lines = []
        for (kind, name), ops in sorted(self.missing.items()):
            has = self.allowed.get((kind, name))
            now = "the broker did not say" if has is None else ", ".join(sorted(has)) or "nothing"
            lines.append(f"- {', '.join(sorted(ops))} on {kind} {name!r} (allowed now: {now})")
        raise BrokerError(
            "authorization",
            f"Kafka at {self.settings.broker} does not allow {principal(self.settings)} what projector needs:\n"
            + "\n".join(lines) + "\nGrant it (as a Kafka admin) with:\n"
            + "\n".join(f"  {line}" for line in self.grants()))

    def grants(self) -> list[str]:
        """One ``kafka-acls.sh`` line per resource: everything a worker needs there, not only what is missing.

        The app's own topics (``<app id>-...``) get one line for their prefix,
        as the README's ACLs have it.
        """
        settings, prefix = self.settings, f"{self.settings.app_id}-"
        lines = set()
        for kind, name in self.missing:
            if kind == "group":
                lines.add(acl_command(settings, "group", name, GROUP_OPERATIONS | {"DESCRIBE"}))
            elif name.startswith(prefix) and name not in (settings.events_topic, settings.control_topic,
                                                            settings.deadletter_topic):
                lines.add(acl_command(settings, "topic", prefix, TOPIC_OPERATIONS | {"CREATE"}, prefixed=True))
            else:
                lines.add(acl_command(settings, "topic", name, TOPIC_OPERATIONS | {"CREATE"}))
        return sorted(lines)


async def prepare_worker_topics(settings: Settings, derived: Iterable[str],
                                tables: Iterable[str]) -> tuple[Settings, int]:
    """Everything a worker needs of Kafka before Faust starts; returns (settings, events partitions).

    Reaches the broker (:class:`~projector.runtime.kafka.BrokerError` when it cannot:
    unreachable, a refused login, a TLS problem), resolves the replication
    settings, creates the missing topics, logs each topic's real settings,
    refuses topics that cannot serve (:class:`TopicError`), and checks that
    this principal may do what a worker does on every topic and on its
    consumer group (a ``BrokerError`` of kind ``authorization`` naming each
    missing operation and the ``kafka-acls.sh`` lines that grant it).
    """
    derived, tables = list(derived), list(tables)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    admin = await connect_admin(settings, timeout=STARTUP_TIMEOUT)
    try:
        settings = await _replication(admin, settings)
        access = _Access(settings)
        access.need("group", settings.app_id, GROUP_OPERATIONS,
                    await group_operations(admin, settings.app_id, deadline))
        # Every name is known before the events topic's partition count.
        specs = worker_topics(settings, settings.partitions, derived, tables)
        infos = await describe_topics(admin, [s.name for s in specs])
        access.need_described(infos)
        access.check()
        events = infos[settings.events_topic]
        partitions = events.partitions if events.exists else settings.partitions
        specs = worker_topics(settings, partitions, derived, tables)
        # Existing topics that cannot serve stop the worker before it creates any.
        configs, refused = await _configs(admin, [s.name for s in specs if infos[s.name].exists])
        problems = _shape_problems(settings, specs, infos, configs, partitions)
        if problems:
            raise TopicError("\n".join(problems))
        created = await _create_missing(admin, settings, specs, infos, access)
        infos = await _wait_visible(admin, [s.name for s in specs], deadline)
        more, refused_more = await _configs(admin, created)
        configs.update(more)
        refused += refused_more
        for spec in specs:
            if spec.name in configs:
                verb = "created topic" if spec.name in created else "using topic"
                log.info("%s %s: %s", verb, spec.name, _summary(infos[spec.name], configs[spec.name]))
        for spec in specs:
            allowed = infos[spec.name].allowed
            if spec.name in refused and allowed is not None:
                allowed = allowed - {"DESCRIBE_CONFIGS"}
            access.need("topic", spec.name, TOPIC_OPERATIONS, allowed)
        access.check()
        warning = retention_warning(settings, configs.get(settings.events_topic, {}))
        if warning:
            log.warning("%s", warning)
        settings = dataclasses.replace(settings, retention_warning=warning)
        return record_limit(settings, specs, configs), partitions
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()


async def topic_names(settings: Settings) -> set[str]:
    """The names of every topic this principal may see (a metadata request for all topics creates none)."""
    admin = await connect_admin(settings)
    try:
        return set(await admin.list_topics())
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()


async def delete_topic(settings: Settings, name: str) -> None:
    """Delete one topic projector made (an old read-model version's changelog)."""
    admin = await connect_admin(settings)
    try:
        response = await admin.delete_topics([name])
        for topic, code, message in _topic_errors(response):
            if code not in (0, UNKNOWN_TOPIC_OR_PARTITION):
                raise TopicError(f"deleting topic {topic!r} failed: error {code} {message or ''}".strip())
    finally:
        await admin.close()


async def existing_topics(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics among ``names`` that exist (asking creates none)."""
    admin = await connect_admin(settings)
    try:
        infos = await describe_topics(admin, names)
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()
    return {name: info.partitions for name, info in infos.items() if info.exists}


async def ensure_topics(settings: Settings, specs: Optional[list[TopicSpec]] = None) -> dict[str, int]:
    """Create the missing topics of ``specs`` (default: events, control, dead letters); return partition counts.

    For the tools that write before any worker runs (``produce-demo``,
    ``control --direct``, the demo): the events topic they create is the one
    a worker will use. An existing topic is used as it is.
    """
    specs = base_topics(settings) if specs is None else specs
    admin = await connect_admin(settings)
    try:
        settings = await _replication(admin, settings)
        names = [s.name for s in specs]
        infos = await describe_topics(admin, names)
        access = _Access(settings)
        access.need_described(infos)
        access.check()
        problems = _shape_problems(settings, specs, infos, {}, 0)  # base topics: the control topic's count
        if problems:
            raise TopicError("\n".join(problems))
        created = await _create_missing(admin, settings, specs, infos, access)
        infos = await _wait_visible(admin, names, time.monotonic() + 30)
        for name in created:
            log.info("created topic %s: %s", name, _summary(infos[name], {}))
        return {name: info.partitions for name, info in infos.items()}
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc!r}") from exc
    finally:
        await admin.close()


def _topic_errors(response: Any) -> list[tuple[str, int, str]]:
    obj = response.to_object()
    rows = obj.get("topic_errors") or obj.get("topics") or []
    return [(r.get("topic") or r.get("name"), r["error_code"], r.get("error_message")) for r in rows]
