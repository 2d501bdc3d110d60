"""projector.runtime.topics: the topics a worker needs, and why existing ones cannot serve (no broker)."""

from __future__ import annotations

import re

import pytest

from projector.core.engine import MAX_RECORD_BYTES
from projector.runtime.config import Settings
from projector.runtime.errors import BrokerError
from projector.runtime.kafka import TopicInfo
from projector.runtime.topics import (
    GROUP_OPERATIONS,
    TOPIC_OPERATIONS,
    _Access,
    _shape_problems,
    _summary,
    base_topics,
    record_limit,
    worker_topics,
)

ENV = {"PROJECTOR_BROKER": "kafka://k1:9092,k2:9092", "PROJECTOR_APP_ID": "bank", "PROJECTOR_PARTITIONS": "8"}
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
COMPACT = {"cleanup.policy": "compact"}


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env(ENV)


def test_base_topics_are_events_control_and_dead_letters(settings):
    assert [(s.name, s.partitions, s.config, s.compacted, s.co_partitioned) for s in base_topics(settings)] == [
        ("events", 8, FOREVER, False, False),
        ("control", 1, COMPACT, True, False),
        ("events.deadletter", 1, FOREVER, False, False),
    ]


def test_worker_topics_take_the_partitions_of_the_events_topic(settings):
    specs = worker_topics(settings, 12, ["owners"], ["accounts"])
    assert {s.name: (s.partitions, s.config, s.compacted, s.co_partitioned) for s in specs} == {
        "events": (12, FOREVER, False, False),
        "control": (1, COMPACT, True, False),
        "events.deadletter": (1, FOREVER, False, False),
        "bank-engine-commands": (12, {}, False, True),
        "bank-commands": (12, {}, False, True),
        "bank-owners-repartition": (12, {}, False, True),
        "bank-accounts-changelog": (12, COMPACT, True, True),
    }
    assert len(specs) == 7


def test_worker_topics_without_read_models(settings):
    assert [s.name for s in worker_topics(settings, 3)] == [
        "events", "control", "events.deadletter", "bank-engine-commands", "bank-commands"]


# --- topics that exist but cannot serve ----------------------------------------------------


def shape_problems(settings: Settings, partitions: dict[str, int | None] | None = None,
                   configs: dict[str, dict[str, str]] | None = None, events: int = 12) -> list[str]:
    """_shape_problems of a worker's topics as made, but for ``partitions`` and ``configs``."""
    specs = worker_topics(settings, events, ["owners"], ["accounts"])
    infos = {s.name: TopicInfo(s.name, s.partitions, 1, None) for s in specs}
    for name, count in (partitions or {}).items():
        infos[name] = TopicInfo(name, count, 1 if count else 0, None)
    return _shape_problems(settings, specs, infos, configs or {}, events)


def test_topics_as_projector_makes_them_have_no_problem(settings):
    configs = {"control": {"cleanup.policy": "compact"},
               "bank-accounts-changelog": {"cleanup.policy": "compact,delete"}}
    assert shape_problems(settings, configs=configs) == []


def test_a_control_topic_of_several_partitions_is_refused(settings):
    [problem] = shape_problems(settings, {"control": 3})
    assert "control topic 'control' has 3 partitions" in problem
    assert "exactly 1" in problem
    assert "PROJECTOR_CONTROL_TOPIC" in problem


@pytest.mark.parametrize("name", ["bank-owners-repartition", "bank-accounts-changelog", "bank-commands",
                                  "bank-engine-commands"])
def test_a_derived_topic_of_another_partition_count_is_refused(settings, name):
    [problem] = shape_problems(settings, {name: 4})
    assert f"topic {name!r} has 4 partitions" in problem
    assert "events topic 'events' has 12" in problem
    assert "PROJECTOR_APP_ID" in problem
    assert problem.endswith(f"kafka-topics.sh --bootstrap-server k1:9092 --delete --topic {name}")


def test_the_events_and_dead_letter_topics_may_have_any_partition_count(settings):
    assert shape_problems(settings, {"events.deadletter": 5}) == []


@pytest.mark.parametrize("name", ["bank-accounts-changelog", "control"])
@pytest.mark.parametrize("policy", ["delete", ""])
def test_a_compacted_topic_that_is_not_compacted_is_refused(settings, name, policy):
    [problem] = shape_problems(settings, configs={name: {"cleanup.policy": policy} if policy else {}})
    assert f"topic {name!r} must be compacted" in problem
    assert f"cleanup.policy={policy or '?'}" in problem
    assert problem.endswith(f"kafka-configs.sh --bootstrap-server k1:9092 --alter --entity-type topics "
                            f"--entity-name {name} --add-config cleanup.policy=compact")


def test_every_problem_is_reported(settings):
    problems = shape_problems(settings, {"control": 2, "bank-commands": 24},
                              configs={"bank-accounts-changelog": {"cleanup.policy": "delete"}})
    assert len(problems) == 3


@pytest.mark.parametrize("partitions", [None, -1])
def test_a_missing_or_hidden_topic_has_no_shape_problem(settings, partitions):
    names = ["control", "bank-owners-repartition", "bank-accounts-changelog"]
    configs = {"bank-accounts-changelog": {"cleanup.policy": "delete"}}
    assert shape_problems(settings, dict.fromkeys(names, partitions), configs) == []


def test_a_topic_not_described_has_no_shape_problem(settings):
    specs = worker_topics(settings, 12, ["owners"], ["accounts"])
    assert _shape_problems(settings, specs, {}, {}, 12) == []


# --- what this principal may not do -------------------------------------------------------------


def test_access_error_names_each_missing_operation_and_how_to_grant_it():
    settings = Settings.from_env({**ENV, "PROJECTOR_BROKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                  "PROJECTOR_BROKER_SASL_USERNAME": "alice",
                                  "PROJECTOR_BROKER_SASL_PASSWORD": "pw-not-shown"})
    access = _Access(settings)
    access.need("topic", "events", TOPIC_OPERATIONS, frozenset({"DESCRIBE", "WRITE", "DESCRIBE_CONFIGS"}))
    access.need("topic", "bank-commands", {"DESCRIBE"}, frozenset())
    access.need("topic", "bank-owners-changelog", {"CREATE"}, frozenset({"DESCRIBE"}))
    access.need("group", "bank", GROUP_OPERATIONS, frozenset())
    access.need("topic", "control", TOPIC_OPERATIONS, TOPIC_OPERATIONS)  # all there: not listed
    access.need("topic", "old-broker", TOPIC_OPERATIONS, None)  # the broker did not say: not listed
    with pytest.raises(BrokerError) as info:
        access.check()
    error, message = info.value, str(info.value)
    assert error.kind == "authorization"
    assert "does not allow User:alice " in message
    assert "- READ on topic 'events' (allowed now: DESCRIBE, DESCRIBE_CONFIGS, WRITE)" in message
    assert "- DESCRIBE on topic 'bank-commands' (allowed now: nothing)" in message
    assert "- CREATE on topic 'bank-owners-changelog' (allowed now: DESCRIBE)" in message
    assert "- READ on group 'bank' (allowed now: nothing)" in message
    assert "'control'" not in message and "old-broker" not in message
    grants = [line.strip() for line in message.splitlines() if "kafka-acls.sh" in line]
    by_resource = {re.search(r"--(?:topic|group) \S+( --resource-pattern-type prefixed)?$", line).group(): line
                   for line in grants}
    # The app's own topics get one line for their prefix; a worker's whole set of operations on each.
    assert by_resource.keys() == {"--topic events", "--topic bank- --resource-pattern-type prefixed",
                                  "--group bank"}
    for line in grants:
        assert "--allow-principal User:alice " in line
    for resource in ("--topic events", "--topic bank- --resource-pattern-type prefixed"):
        assert re.findall(r"--operation (\S+)", by_resource[resource]) == [
            "Create", "Describe", "DescribeConfigs", "Read", "Write"]
    assert re.findall(r"--operation (\S+)", by_resource["--group bank"]) == ["Describe", "Read"]
    assert "pw-not-shown" not in message


def test_access_with_nothing_missing_passes():
    access = _Access(Settings.from_env(ENV))
    access.need("group", "bank", GROUP_OPERATIONS, frozenset({"READ", "DESCRIBE"}))
    access.check()


# --- how a topic is logged ----------------------------------------------------------------------


@pytest.mark.parametrize("info,configs,expected", [
    (TopicInfo("t", 1, 3), {"cleanup.policy": "compact", "segment.ms": "1"},
     "1 partition, replication factor 3, cleanup.policy=compact"),
    (TopicInfo("t", 12, 1), {"retention.ms": "-1", "retention.bytes": "-1", "min.insync.replicas": "2"},
     "12 partitions, replication factor 1, retention.ms=-1, retention.bytes=-1, min.insync.replicas=2"),
])
def test_summary(info, configs, expected):
    assert _summary(info, configs) == expected


def test_the_record_limit_is_the_default_unless_a_written_topic_takes_less(settings):
    specs = worker_topics(settings, 8, ["owners"], ["accounts", "_index"])
    assert settings.max_record_bytes == MAX_RECORD_BYTES < 1_000_000
    kafka_default = {s.name: {"max.message.bytes": "1048588"} for s in specs}
    assert record_limit(settings, specs, kafka_default).max_record_bytes == MAX_RECORD_BYTES
    # The events and control topics are not written with projector's own records: their limits do not count.
    bigger = {**kafka_default, "events": {"max.message.bytes": "100"}, "control": {"max.message.bytes": "100"}}
    assert record_limit(settings, specs, bigger).max_record_bytes == MAX_RECORD_BYTES
    small = {**kafka_default, "bank-_index-changelog": {"max.message.bytes": "200000"}}
    assert record_limit(settings, specs, small).max_record_bytes == 200000 - 8192
    small_dead = {**kafka_default, "events.deadletter": {"max.message.bytes": "300000"}}
    assert record_limit(settings, specs, small_dead).max_record_bytes == 300000 - 8192
    # A topic whose configs could not be read keeps the default.
    assert record_limit(settings, specs, {}).max_record_bytes == MAX_RECORD_BYTES
