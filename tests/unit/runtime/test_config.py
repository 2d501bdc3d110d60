"""projector.runtime.config: settings from the environment (CONTRACT §1)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from projector.runtime.config import BrokerSecurity, Settings, parse_brokers
from projector.runtime.errors import ConfigError

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
    from projector.runtime.topics import replication_configs

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


# --- broker security: PROJECTOR_BROKER_SECURITY_PROTOCOL, SASL and TLS --------------------

PASSWORD = "Zq-7!unlikely-pa55word"
SASL = {
    "PROJECTOR_BROKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "PROJECTOR_BROKER_SASL_USERNAME": "alice",
    "PROJECTOR_BROKER_SASL_PASSWORD": PASSWORD,
}
SSL_FILE_VARS = ["PROJECTOR_BROKER_SSL_CAFILE", "PROJECTOR_BROKER_SSL_CERTFILE", "PROJECTOR_BROKER_SSL_KEYFILE"]


def make_certificate(directory: Path, cn: str) -> tuple[str, str]:
    """A self-signed certificate (a CA, or a client certificate) and its unencrypted key, as PEM files."""
    cert, key = directory / f"{cn}.pem", directory / f"{cn}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}"], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_certificate(directory, "test-ca")
    _, other_key = make_certificate(directory, "other")
    garbage = directory / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    return {"ca": ca, "ca_key": ca_key, "other_key": other_key, "garbage": str(garbage), "dir": str(directory)}


def ssl_env(**files: str) -> dict[str, str]:
    """PROTOCOL=SSL with the given files: ssl_env(cafile=..., certfile=..., keyfile=...)."""
    return {"PROJECTOR_BROKER_SECURITY_PROTOCOL": "SSL",
            **{f"PROJECTOR_BROKER_SSL_{name.upper()}": path for name, path in files.items()}}


def test_security_defaults_to_plaintext_without_credentials():
    security = Settings.from_env({}).security
    assert security == BrokerSecurity()
    assert (security.protocol, security.sasl_mechanism) == ("PLAINTEXT", "PLAIN")
    assert (security.sasl_username, security.sasl_password) == (None, None)
    assert (security.ssl_cafile, security.ssl_certfile, security.ssl_keyfile) == (None, None, None)
    assert not security.uses_sasl and not security.uses_ssl
    assert security.describe() == "PLAINTEXT"


@pytest.mark.parametrize("raw,protocol", [("sasl_plaintext", "SASL_PLAINTEXT"), ("Sasl_Ssl", "SASL_SSL"),
                                          (" sasl_ssl ", "SASL_SSL")])
@pytest.mark.parametrize("raw_mechanism,mechanism", [("scram-sha-512", "SCRAM-SHA-512"),
                                                      ("Scram-Sha-256", "SCRAM-SHA-256"), ("plain", "PLAIN")])
def test_protocol_and_mechanism_are_case_insensitive(raw, protocol, raw_mechanism, mechanism):
    env = {**SASL, "PROJECTOR_BROKER_SECURITY_PROTOCOL": raw, "PROJECTOR_BROKER_SASL_MECHANISM": raw_mechanism}
    security = Settings.from_env(env).security
    assert (security.protocol, security.sasl_mechanism) == (protocol, mechanism)
    assert security.uses_sasl
    assert security.uses_ssl == (protocol == "SASL_SSL")


@pytest.mark.parametrize("raw,protocol", [("ssl", "SSL"), ("plaintext", "PLAINTEXT")])
def test_protocols_without_sasl_are_case_insensitive(raw, protocol):
    assert Settings.from_env({"PROJECTOR_BROKER_SECURITY_PROTOCOL": raw}).security.protocol == protocol


@pytest.mark.parametrize("name,raw,allowed", [
    ("PROJECTOR_BROKER_SECURITY_PROTOCOL", "TLS", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
    ("PROJECTOR_BROKER_SECURITY_PROTOCOL", "SASL", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
    ("PROJECTOR_BROKER_SASL_MECHANISM", "GSSAPI", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
    ("PROJECTOR_BROKER_SASL_MECHANISM", "SCRAM-SHA-1", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
])
def test_unknown_protocol_or_mechanism_is_refused_naming_the_allowed_values(name, raw, allowed):
    msg = config_error({**SASL, name: raw})
    assert name in msg
    assert raw in msg
    assert all(value in msg for value in allowed)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("unset,missing", [
    (["PROJECTOR_BROKER_SASL_USERNAME"], "PROJECTOR_BROKER_SASL_USERNAME ("),
    (["PROJECTOR_BROKER_SASL_PASSWORD"], "PROJECTOR_BROKER_SASL_PASSWORD ("),
    (["PROJECTOR_BROKER_SASL_USERNAME", "PROJECTOR_BROKER_SASL_PASSWORD"],
     "PROJECTOR_BROKER_SASL_USERNAME and PROJECTOR_BROKER_SASL_PASSWORD"),
])
def test_sasl_without_username_or_password_is_refused_naming_what_is_missing(protocol, unset, missing):
    env = {**SASL, "PROJECTOR_BROKER_SECURITY_PROTOCOL": protocol}
    for name in unset:
        env[name] = ""
    msg = config_error(env)
    assert protocol in msg
    assert f"needs {missing}" in msg


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
@pytest.mark.parametrize("name", ["PROJECTOR_BROKER_SASL_USERNAME", "PROJECTOR_BROKER_SASL_PASSWORD"])
def test_sasl_credentials_without_a_sasl_protocol_are_refused(protocol, name):
    msg = config_error({"PROJECTOR_BROKER_SECURITY_PROTOCOL": protocol, name: "x"})
    assert f"{name} is set" in msg
    assert protocol in msg and "SASL_SSL" in msg


def test_password_file_without_a_sasl_protocol_is_refused_naming_it(tmp_path):
    (tmp_path / "pw").write_text(PASSWORD)
    msg = config_error({"PROJECTOR_BROKER_SASL_PASSWORD_FILE": str(tmp_path / "pw")})
    assert "PROJECTOR_BROKER_SASL_PASSWORD_FILE" in msg
    assert "PLAINTEXT" in msg and "SASL_SSL" in msg


def test_password_and_password_file_together_are_refused(tmp_path):
    (tmp_path / "pw").write_text(PASSWORD)
    msg = config_error({**SASL, "PROJECTOR_BROKER_SASL_PASSWORD_FILE": str(tmp_path / "pw")})
    assert "PROJECTOR_BROKER_SASL_PASSWORD " in msg and "PROJECTOR_BROKER_SASL_PASSWORD_FILE" in msg
    assert PASSWORD not in msg


@pytest.mark.parametrize("content,password", [
    (b"hunter2", "hunter2"),
    (b"hunter2\n", "hunter2"),
    (b"hunter2\r\n", "hunter2"),
    (b"  pass word \t\n", "  pass word \t"),
    (b"hunter2\n\n", "hunter2\n"),  # one line end is stripped, not every trailing one
])
def test_password_file_is_read_without_its_line_end(tmp_path, content, password):
    (tmp_path / "pw").write_bytes(content)
    env = {**SASL, "PROJECTOR_BROKER_SASL_PASSWORD": "", "PROJECTOR_BROKER_SASL_PASSWORD_FILE": str(tmp_path / "pw")}
    security = Settings.from_env(env).security
    assert security.sasl_password == password
    assert security.sasl_username == "alice"


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_password_file_is_refused(tmp_path, content):
    (tmp_path / "pw").write_bytes(content)
    msg = config_error({**SASL, "PROJECTOR_BROKER_SASL_PASSWORD": "",
                        "PROJECTOR_BROKER_SASL_PASSWORD_FILE": str(tmp_path / "pw")})
    assert "PROJECTOR_BROKER_SASL_PASSWORD_FILE" in msg and str(tmp_path / "pw") in msg
    assert "empty" in msg


def test_missing_password_file_is_refused_naming_the_variable_and_path(tmp_path):
    path = str(tmp_path / "no-such-file")
    msg = config_error({**SASL, "PROJECTOR_BROKER_SASL_PASSWORD": "", "PROJECTOR_BROKER_SASL_PASSWORD_FILE": path})
    assert f"PROJECTOR_BROKER_SASL_PASSWORD_FILE={path}" in msg


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("name", SSL_FILE_VARS)
def test_tls_files_without_a_tls_protocol_are_refused(pki, protocol, name):
    credentials = SASL if protocol.startswith("SASL_") else {}
    msg = config_error({**credentials, "PROJECTOR_BROKER_SECURITY_PROTOCOL": protocol, name: pki["ca"]})
    assert f"{name} is set" in msg
    assert protocol in msg and "SASL_SSL" in msg


def test_keyfile_without_certfile_is_refused(pki):
    msg = config_error(ssl_env(keyfile=pki["ca_key"]))
    assert "PROJECTOR_BROKER_SSL_KEYFILE" in msg and "PROJECTOR_BROKER_SSL_CERTFILE" in msg


@pytest.mark.parametrize("cafile", ["missing", "directory", "garbage", "empty", "private key"])
def test_unusable_cafile_is_refused_at_once(pki, tmp_path, cafile):
    (tmp_path / "empty.pem").write_bytes(b"")
    path = {"missing": str(tmp_path / "nope.pem"), "directory": str(tmp_path), "garbage": pki["garbage"],
            "empty": str(tmp_path / "empty.pem"), "private key": pki["ca_key"]}[cafile]
    msg = config_error(ssl_env(cafile=path))
    assert f"PROJECTOR_BROKER_SSL_CAFILE={path}" in msg


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_a_ca_certificate_is_accepted(pki, protocol):
    credentials = SASL if protocol.startswith("SASL_") else {}
    security = Settings.from_env({**credentials, **ssl_env(cafile=pki["ca"]),
                                  "PROJECTOR_BROKER_SECURITY_PROTOCOL": protocol}).security
    assert security.protocol == protocol
    assert security.uses_ssl
    assert security.ssl_cafile == pki["ca"]
    assert pki["ca"] in security.describe()


def test_tls_without_a_cafile_uses_the_system_cas():
    security = Settings.from_env({"PROJECTOR_BROKER_SECURITY_PROTOCOL": "SSL"}).security
    assert security.ssl_cafile is None
    assert security.describe() == "SSL, CA the system CAs"


def test_a_client_certificate_and_its_key_are_accepted_for_mutual_tls(pki):
    security = Settings.from_env(ssl_env(cafile=pki["ca"], certfile=pki["ca"], keyfile=pki["ca_key"])).security
    assert (security.ssl_certfile, security.ssl_keyfile) == (pki["ca"], pki["ca_key"])
    assert f"client certificate {pki['ca']}" in security.describe()


@pytest.mark.parametrize("key", ["other_key", "garbage", None])
def test_a_client_certificate_without_its_key_is_refused(pki, key):
    env = ssl_env(cafile=pki["ca"], certfile=pki["ca"], **({"keyfile": pki[key]} if key else {}))
    msg = config_error(env)
    assert f"PROJECTOR_BROKER_SSL_CERTFILE={pki['ca']}" in msg
    assert "PROJECTOR_BROKER_SSL_KEYFILE=" + (pki[key] if key else "(unset)") in msg


@pytest.mark.parametrize("password_from", ["variable", "file"])
def test_the_password_is_never_shown(pki, tmp_path, password_from):
    env = {**SASL, **ssl_env(cafile=pki["ca"]), "PROJECTOR_BROKER_SECURITY_PROTOCOL": "SASL_SSL",
           "PROJECTOR_BROKER_SASL_MECHANISM": "SCRAM-SHA-512"}
    if password_from == "file":
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        env.update(PROJECTOR_BROKER_SASL_PASSWORD="", PROJECTOR_BROKER_SASL_PASSWORD_FILE=str(tmp_path / "pw"))
    settings = Settings.from_env(env)
    assert settings.security.sasl_password == PASSWORD
    for shown in (repr(settings), str(settings), repr(settings.security), settings.security.describe()):
        assert PASSWORD not in shown
    assert settings.security.describe() == f"SASL_SSL, SCRAM-SHA-512 as alice, CA {pki['ca']}"


# --- PROJECTOR_WEB_BIND --------------------------------------------------------------------


def test_the_server_listens_on_the_web_host_unless_web_bind_is_set():
    settings = Settings.from_env({"PROJECTOR_WEB_HOST": "10.0.0.5", "PROJECTOR_WEB_PORT": "7000"})
    assert settings.web_bind is None
    assert settings.bind_address == "10.0.0.5"
    assert Settings.from_env({"PROJECTOR_WEB_BIND": " "}).bind_address == "127.0.0.1"


def test_web_bind_sets_the_listening_address_only():
    settings = Settings.from_env({"PROJECTOR_WEB_HOST": "worker-1.example", "PROJECTOR_WEB_PORT": "7000",
                                  "PROJECTOR_WEB_BIND": "0.0.0.0"})
    assert settings.bind_address == "0.0.0.0"
    assert settings.url == "http://worker-1.example:7000"


# --- tokens from files (PROJECTOR_*_TOKEN_FILE) ------------------------------------------

TOKEN_VARS = {"PROJECTOR_API_TOKEN": "api_token", "PROJECTOR_ADMIN_TOKEN": "admin_token",
              "PROJECTOR_PEER_TOKEN": "peer_token"}
TOKEN = "tok-3f9a!unlikely"


@pytest.mark.parametrize("name", TOKEN_VARS)
@pytest.mark.parametrize("content,token", [
    (TOKEN.encode(), TOKEN),
    (TOKEN.encode() + b"\n", TOKEN),
    (TOKEN.encode() + b"\r\n", TOKEN),
    (TOKEN.encode() + b"\n\n", TOKEN + "\n"),  # one line end is stripped, not every trailing one
])
def test_token_file_is_read_without_its_line_end(tmp_path, name, content, token):
    (tmp_path / "token").write_bytes(content)
    settings = Settings.from_env({name: "", f"{name}_FILE": str(tmp_path / "token")})
    assert getattr(settings, TOKEN_VARS[name]) == token
    others = {attr for var, attr in TOKEN_VARS.items() if var != name}
    assert all(getattr(settings, attr) is None for attr in others)


def test_all_three_token_files_together(tmp_path):
    env = {}
    for name in TOKEN_VARS:
        (tmp_path / name).write_text(f"{name}-secret\n")
        env[f"{name}_FILE"] = str(tmp_path / name)
    settings = Settings.from_env(env)
    assert (settings.api_token, settings.admin_token, settings.peer_token) == (
        "PROJECTOR_API_TOKEN-secret", "PROJECTOR_ADMIN_TOKEN-secret", "PROJECTOR_PEER_TOKEN-secret")
    assert settings.peer_secret == "PROJECTOR_PEER_TOKEN-secret"


def test_api_token_from_a_file_derives_the_same_peer_secret_as_the_value(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    from_file = Settings.from_env({"PROJECTOR_API_TOKEN_FILE": str(tmp_path / "token")})
    assert from_file.peer_secret == Settings.from_env({"PROJECTOR_API_TOKEN": TOKEN}).peer_secret


@pytest.mark.parametrize("name", TOKEN_VARS)
def test_token_and_token_file_together_are_refused(tmp_path, name):
    (tmp_path / "token").write_text(TOKEN)
    msg = config_error({name: "other", f"{name}_FILE": str(tmp_path / "token")})
    assert f"{name} " in msg and f"{name}_FILE" in msg and "not both" in msg
    assert TOKEN not in msg and "other" not in msg


@pytest.mark.parametrize("name", TOKEN_VARS)
@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_token_file_is_refused(tmp_path, name, content):
    (tmp_path / "token").write_bytes(content)
    msg = config_error({f"{name}_FILE": str(tmp_path / "token")})
    assert f"{name}_FILE={tmp_path / 'token'}" in msg and "empty" in msg


@pytest.mark.parametrize("name", TOKEN_VARS)
@pytest.mark.parametrize("kind", ["missing", "directory", "not utf-8"])
def test_unreadable_token_file_is_refused_naming_the_variable_and_path(tmp_path, name, kind):
    path = tmp_path / "token"
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"\xff\xfe secret")
    msg = config_error({f"{name}_FILE": str(path)})
    assert f"{name}_FILE={path}: cannot read it" in msg


def test_password_file_that_is_not_utf8_is_refused_naming_it(tmp_path):
    (tmp_path / "pw").write_bytes(b"\xff\xfe")
    msg = config_error({**SASL, "PROJECTOR_BROKER_SASL_PASSWORD": "",
                        "PROJECTOR_BROKER_SASL_PASSWORD_FILE": str(tmp_path / "pw")})
    assert f"PROJECTOR_BROKER_SASL_PASSWORD_FILE={tmp_path / 'pw'}: cannot read it" in msg


# --- PROJECTOR_INSTANCE_ID -----------------------------------------------------------------


def test_instance_id_defaults_to_the_host_name_and_the_web_port(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "projector-2")
    assert Settings.from_env({"PROJECTOR_WEB_PORT": "6066"}).instance_id == "projector-2-6066"
    # Two workers on one host, on two ports, are two members; empty counts as unset.
    assert Settings.from_env({"PROJECTOR_WEB_PORT": "6067", "PROJECTOR_INSTANCE_ID": " "}).instance_id \
        == "projector-2-6067"


def test_a_host_name_kafka_would_refuse_is_made_acceptable_and_short_enough():
    from projector.runtime.config import default_instance_id

    assert default_instance_id(6066, "my host@lab") == "my_host_lab-6066"
    long = default_instance_id(6066, "h" * 300)
    assert len(long) == 249 and long.endswith("-6066")
    assert default_instance_id(6066, "") == "projector-6066"


def test_instance_id_may_be_set():
    assert Settings.from_env({"PROJECTOR_INSTANCE_ID": "worker-0.projector_a"}).instance_id == "worker-0.projector_a"
    assert Settings.from_env({"PROJECTOR_INSTANCE_ID": "x" * 249}).instance_id == "x" * 249


@pytest.mark.parametrize("raw", ["none", "None", "OFF", " none "])
def test_instance_id_none_turns_static_membership_off(raw):
    assert Settings.from_env({"PROJECTOR_INSTANCE_ID": raw}).instance_id is None


@pytest.mark.parametrize("raw", ["x" * 250, "a b", "wörker", "w/1", ".", "..", "tab\there"])
def test_an_instance_id_kafka_would_refuse_is_refused_naming_the_variable(raw):
    with pytest.raises(ConfigError, match="PROJECTOR_INSTANCE_ID must be 1 to 249"):
        Settings.from_env({"PROJECTOR_INSTANCE_ID": raw})


def test_settings_made_in_code_have_no_instance_id():
    assert Settings().instance_id is None


# --- PROJECTOR_LEAVE_ON_STOP ------------------------------------------------------------------


@pytest.mark.parametrize("raw,leave", [(None, True), ("", True), ("true", True), ("1", True), ("YES", True),
                                       ("false", False), ("0", False), (" no ", False)])
def test_leave_on_stop_defaults_to_true_and_may_be_turned_off(raw, leave):
    env = {} if raw is None else {"PROJECTOR_LEAVE_ON_STOP": raw}
    assert Settings.from_env(env).leave_on_stop is leave


def test_a_leave_on_stop_that_is_not_a_boolean_is_refused_naming_the_variable():
    with pytest.raises(ConfigError, match="PROJECTOR_LEAVE_ON_STOP must be true or false, got 'sometimes'"):
        Settings.from_env({"PROJECTOR_LEAVE_ON_STOP": "sometimes"})
