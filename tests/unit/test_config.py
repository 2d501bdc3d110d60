"""projector.config: settings from the environment (CONTRACT §1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from projector.config import ConfigError, Settings, parse_brokers

CONTRACT_DEFAULTS = {
    "broker": "kafka://127.0.0.1:9092",
    "app_id": "projector",
    "events_topic": "events",
    "control_topic": "control",
    "partitions": 8,
    "data_dir": Path("./data"),
    "web_host": "127.0.0.1",
    "web_port": 6066,
    "api_token": None,
    "admin_token": None,
}

FULL_ENV = {
    "PROJECTOR_BROKER": "kafka://k1:19092,k2:29092",
    "PROJECTOR_APP_ID": "bank",
    "PROJECTOR_EVENTS_TOPIC": "bank-events",
    "PROJECTOR_CONTROL_TOPIC": "bank-control",
    "PROJECTOR_PARTITIONS": "12",
    "PROJECTOR_DATA_DIR": "/var/lib/projector",
    "PROJECTOR_WEB_HOST": "10.0.0.5",
    "PROJECTOR_WEB_PORT": "7000",
    "PROJECTOR_API_TOKEN": "api-secret",
    "PROJECTOR_ADMIN_TOKEN": "admin-secret",
}


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return str(info.value)


# --- defaults and overrides ------------------------------------------------------------


def test_defaults_are_the_contract_defaults():
    settings = Settings.from_env({})
    assert {name: getattr(settings, name) for name in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS
    assert settings.bootstrap_servers == ["127.0.0.1:9092"]
    assert settings.deadletter_topic == "events.deadletter"
    assert settings.url == "http://127.0.0.1:6066"


def test_defaults_come_from_the_process_environment(monkeypatch):
    for name in [*FULL_ENV, "PROJECTOR_REPLICATION_FACTOR"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROJECTOR_APP_ID", "from-os")
    settings = Settings.from_env()
    assert settings.app_id == "from-os"
    assert settings.partitions == 8


def test_every_variable_overrides_its_default():
    settings = Settings.from_env(FULL_ENV)
    assert settings.broker == "kafka://k1:19092,k2:29092"
    assert settings.bootstrap_servers == ["k1:19092", "k2:29092"]
    assert settings.faust_broker == ["kafka://k1:19092", "kafka://k2:29092"]
    assert settings.app_id == "bank"
    assert settings.events_topic == "bank-events"
    assert settings.control_topic == "bank-control"
    assert settings.deadletter_topic == "bank-events.deadletter"
    assert settings.partitions == 12
    assert settings.data_dir == Path("/var/lib/projector")
    assert settings.web_host == "10.0.0.5"
    assert settings.web_port == 7000
    assert settings.url == "http://10.0.0.5:7000"
    assert settings.api_token == "api-secret"
    assert settings.admin_token == "admin-secret"


def test_empty_variables_count_as_unset():
    env = {name: "" for name in FULL_ENV}
    settings = Settings.from_env(env)
    assert {name: getattr(settings, name) for name in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS


def test_integers_may_be_padded_with_spaces():
    settings = Settings.from_env({"PROJECTOR_PARTITIONS": " 3 ", "PROJECTOR_WEB_PORT": "8080\n"})
    assert (settings.partitions, settings.web_port) == (3, 8080)


def test_replication_factor_defaults_to_one_and_can_be_set():
    assert Settings.from_env({}).replication_factor == 1
    assert Settings.from_env({"PROJECTOR_REPLICATION_FACTOR": "3"}).replication_factor == 3


# --- broker lists ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("kafka://a:1,b:2", ["a:1", "b:2"]),
        ("kafka://a:1,kafka://b:2", ["a:1", "b:2"]),
        ("a:1,b:2", ["a:1", "b:2"]),
        ("kafka://127.0.0.1:9092", ["127.0.0.1:9092"]),
        (" kafka://a:1 , b:2 ,", ["a:1", "b:2"]),
        ("kafka://a:1;b:2", ["a:1", "b:2"]),
        ("broker-0.kafka.svc.cluster.local:9092", ["broker-0.kafka.svc.cluster.local:9092"]),
        ("[::1]:9092", ["[::1]:9092"]),
    ],
)
def test_parse_brokers(raw, expected):
    assert parse_brokers(raw) == expected


def test_broker_list_from_the_environment():
    settings = Settings.from_env({"PROJECTOR_BROKER": "kafka://a:1,b:2"})
    assert settings.bootstrap_servers == ["a:1", "b:2"]
    assert settings.faust_broker == ["kafka://a:1", "kafka://b:2"]


@pytest.mark.parametrize("raw", ["http://a:1", "kafkas://a:1", "kafka://a:1,http://b:2", "ssl://a:1"])
def test_non_kafka_scheme_is_refused(raw):
    msg = config_error({"PROJECTOR_BROKER": raw})
    assert "PROJECTOR_BROKER" in msg
    assert "kafka://" in msg


@pytest.mark.parametrize("raw", ["a", "a:", ":9092", "a:x", "a:-1", "kafka://", "kafka://a", "a:1,b"])
def test_broker_without_host_and_port_is_refused(raw):
    msg = config_error({"PROJECTOR_BROKER": raw})
    assert "PROJECTOR_BROKER" in msg
    assert "host:port" in msg


@pytest.mark.parametrize("raw", ["", " ", ",", " , ;"])
def test_empty_broker_list_is_refused(raw):
    with pytest.raises(ConfigError) as info:
        parse_brokers(raw)
    assert "empty" in str(info.value)


@pytest.mark.parametrize("raw", [" ", ",", " , "])
def test_blank_broker_variable_is_refused(raw):
    assert "PROJECTOR_BROKER is empty" in config_error({"PROJECTOR_BROKER": raw})


# --- bad numbers and other bad values ----------------------------------------------------


@pytest.mark.parametrize("name", ["PROJECTOR_PARTITIONS", "PROJECTOR_WEB_PORT", "PROJECTOR_REPLICATION_FACTOR"])
@pytest.mark.parametrize("raw", ["abc", "8.0", "1e3", "0x10", "eight"])
def test_non_integer_is_refused_naming_the_variable(name, raw):
    msg = config_error({name: raw})
    assert name in msg
    assert "must be an integer" in msg
    assert repr(raw) in msg


@pytest.mark.parametrize("name", ["PROJECTOR_PARTITIONS", "PROJECTOR_WEB_PORT", "PROJECTOR_REPLICATION_FACTOR"])
@pytest.mark.parametrize("raw", ["0", "-1"])
def test_below_one_is_refused_naming_the_variable(name, raw):
    msg = config_error({name: raw})
    assert name in msg
    assert "at least 1" in msg


@pytest.mark.parametrize("port", ["65536", "70000"])
def test_port_above_65535_is_refused(port):
    msg = config_error({"PROJECTOR_WEB_PORT": port})
    assert "PROJECTOR_WEB_PORT" in msg


def test_highest_port_is_accepted():
    assert Settings.from_env({"PROJECTOR_WEB_PORT": "65535"}).web_port == 65535


def test_events_and_control_topic_must_differ():
    msg = config_error({"PROJECTOR_EVENTS_TOPIC": "same", "PROJECTOR_CONTROL_TOPIC": "same"})
    assert "PROJECTOR_EVENTS_TOPIC" in msg and "PROJECTOR_CONTROL_TOPIC" in msg


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_replication_is_automatic_unless_set():
    from projector.topics import replication_configs

    auto = Settings.from_env({})
    assert auto.replication_auto and auto.min_insync_replicas is None
    assert replication_configs(auto) == {}
    fixed = Settings.from_env({"PROJECTOR_REPLICATION_FACTOR": "3", "PROJECTOR_MIN_INSYNC_REPLICAS": "2"})
    assert not fixed.replication_auto
    assert (fixed.replication_factor, fixed.min_insync_replicas) == (3, 2)
    assert replication_configs(fixed) == {"min.insync.replicas": "2"}
    with pytest.raises(ConfigError):
        Settings.from_env({"PROJECTOR_MIN_INSYNC_REPLICAS": "x"})


def test_standby_replicas_default_to_one_and_may_be_zero():
    assert Settings.from_env({}).standby_replicas == 1
    assert Settings.from_env({"PROJECTOR_STANDBY_REPLICAS": "0"}).standby_replicas == 0
    with pytest.raises(ConfigError):
        Settings.from_env({"PROJECTOR_STANDBY_REPLICAS": "-1"})
