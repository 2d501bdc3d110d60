"""projector.runtime.kafka: client settings for every Kafka client, errors that name the setting to fix, ACLs.

No broker: only what is decided before a byte is sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import subprocess
import time
from datetime import datetime
from pathlib import Path

import aiokafka.admin.client
import aiokafka.client
import faust
import pytest
from aiokafka import errors as kafka_errors
from aiokafka.protocol.metadata import MetadataRequest_v4, MetadataRequest_v5
from faust.types.auth import AuthProtocol, SASLMechanism

from projector.runtime.config import Settings
from projector.runtime.errors import BrokerError
from projector.runtime.kafka import (
    UNKNOWN_OPERATIONS,
    BrokerWatch,
    RepeatFilter,
    _explain,
    acl_command,
    client_options,
    faust_credentials,
    librdkafka_config,
    operations,
    principal,
    probe,
)

PASSWORD = "Zq-7!unlikely-pa55word"
BROKER = {"PROJECTOR_BROKER": "kafka://k1:9093,k2:9093"}
SASL = {**BROKER, "PROJECTOR_BROKER_SASL_USERNAME": "alice", "PROJECTOR_BROKER_SASL_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed CA and a client certificate (CN=worker-1), each with its key."""
    directory: Path = tmp_path_factory.mktemp("pki")
    out = {}
    for cn in ("test-ca", "worker-1"):
        cert, key = directory / f"{cn}.pem", directory / f"{cn}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}"], check=True, capture_output=True)
        out[cn], out[f"{cn}.key"] = str(cert), str(key)
    return out


def settings_for(protocol: str, pki: dict[str, str] | None = None, client_cert: bool = False, **env: str) -> Settings:
    """Settings with ``protocol``: SASL ones log in as alice; TLS ones trust the test CA."""
    base = dict(SASL if protocol.startswith("SASL_") else BROKER, PROJECTOR_BROKER_SECURITY_PROTOCOL=protocol)
    if pki is not None:
        base["PROJECTOR_BROKER_SSL_CAFILE"] = pki["test-ca"]
        if client_cert:
            base.update(PROJECTOR_BROKER_SSL_CERTFILE=pki["worker-1"], PROJECTOR_BROKER_SSL_KEYFILE=pki["worker-1.key"])
    return Settings.from_env({**base, **env})


# --- no metadata request creates a topic ------------------------------------------------


@pytest.mark.parametrize("module", [aiokafka.client, aiokafka.admin.client], ids=["client", "admin"])
@pytest.mark.parametrize("struct", [MetadataRequest_v4, MetadataRequest_v5])
def test_aiokafka_metadata_requests_never_allow_topic_creation(module, struct):
    request = module.MetadataRequest(["t"]).build(struct)
    assert request.topics == ["t"]
    assert request.allow_auto_topic_creation is False


# --- client settings ------------------------------------------------------------------------


def test_plaintext_client_options():
    assert client_options(settings_for("PLAINTEXT")) == {"bootstrap_servers": "k1:9093,k2:9093",
                                                          "security_protocol": "PLAINTEXT"}


def test_sasl_plaintext_client_options_have_no_tls():
    options = client_options(settings_for("SASL_PLAINTEXT"))
    assert "ssl_context" not in options
    assert options == {"bootstrap_servers": "k1:9093,k2:9093", "security_protocol": "SASL_PLAINTEXT",
                       "sasl_mechanism": "PLAIN", "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD}


def test_sasl_ssl_client_options(pki):
    options = client_options(settings_for("SASL_SSL", pki, PROJECTOR_BROKER_SASL_MECHANISM="SCRAM-SHA-512"))
    context = options.pop("ssl_context")
    assert options == {"bootstrap_servers": "k1:9093,k2:9093", "security_protocol": "SASL_SSL",
                       "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice",
                       "sasl_plain_password": PASSWORD}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_ssl_client_options_with_a_client_certificate(pki):
    options = client_options(settings_for("SSL", pki, client_cert=True))
    assert options["security_protocol"] == "SSL"
    assert not any(key.startswith("sasl") for key in options)
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert {"commonName": "test-ca"} in [dict(pair for rdn in ca["subject"] for pair in rdn)
                                         for ca in context.get_ca_certs()]
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_faust_credentials_for_plaintext_are_none():
    assert faust_credentials(settings_for("PLAINTEXT")) is None


@pytest.mark.parametrize("protocol,mechanism", [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
                                                ("SASL_PLAINTEXT", "PLAIN")])
def test_faust_credentials_for_sasl(pki, protocol, mechanism):
    tls = pki if protocol == "SASL_SSL" else None
    credentials = faust_credentials(settings_for(protocol, tls, PROJECTOR_BROKER_SASL_MECHANISM=mechanism))
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol == AuthProtocol(protocol)
    assert credentials.mechanism == SASLMechanism(mechanism)
    assert (credentials.username, credentials.password) == ("alice", PASSWORD)
    assert isinstance(credentials.ssl_context, ssl.SSLContext) == (protocol == "SASL_SSL")


def test_faust_credentials_for_ssl(pki):
    settings = settings_for("SSL", pki, client_cert=True)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol == AuthProtocol.SSL
    assert credentials.context is client_options(settings)["ssl_context"]


def test_librdkafka_config_for_plaintext():
    assert librdkafka_config(settings_for("PLAINTEXT")) == {"bootstrap.servers": "k1:9093,k2:9093",
                                                            "security.protocol": "PLAINTEXT"}


def test_librdkafka_config_for_sasl_ssl(pki):
    config = librdkafka_config(settings_for("SASL_SSL", pki, PROJECTOR_BROKER_SASL_MECHANISM="SCRAM-SHA-256"))
    assert config == {"bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "SASL_SSL",
                      "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice", "sasl.password": PASSWORD,
                      "ssl.ca.location": pki["test-ca"]}


def test_librdkafka_config_for_mutual_tls(pki):
    assert librdkafka_config(settings_for("SSL", pki, client_cert=True)) == {
        "bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "SSL", "ssl.ca.location": pki["test-ca"],
        "ssl.certificate.location": pki["worker-1"], "ssl.key.location": pki["worker-1.key"]}


def test_principal_is_the_sasl_user():
    assert principal(settings_for("SASL_PLAINTEXT")) == "User:alice"


def test_principal_of_a_client_certificate_names_its_subject(pki):
    assert "CN=worker-1" in principal(settings_for("SSL", pki, client_cert=True))


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_principal_without_credentials_is_anonymous(protocol):
    assert principal(settings_for(protocol)) == "User:ANONYMOUS"


# --- authorized operations and ACLs -----------------------------------------------------------


def test_operations_of_an_unknown_bit_field_are_unknown():
    assert operations(UNKNOWN_OPERATIONS) is None
    assert operations(-2147483648) is None


@pytest.mark.parametrize("bits,expected", [
    ((1 << 3) | (1 << 4) | (1 << 8), {"READ", "WRITE", "DESCRIBE"}),
    (1 << 10, {"DESCRIBE_CONFIGS"}),
    ((1 << 3) | (1 << 2) | (1 << 13), {"READ"}),  # codes without a name here (ALL, ...) are left out
    (0, set()),
])
def test_operations_of_a_bit_field(bits, expected):
    assert operations(bits) == frozenset(expected)


def test_acl_command_grants_each_operation_to_the_principal():
    line = acl_command(settings_for("SASL_PLAINTEXT", PROJECTOR_BROKER_SASL_USERNAME="x"), "topic", "t",
                       {"READ", "WRITE", "DESCRIBE_CONFIGS"})
    assert line.startswith("kafka-acls.sh --bootstrap-server k1:9093 ")
    assert "--add --allow-principal User:x " in line
    assert re.findall(r"--operation (\S+)", line) == ["DescribeConfigs", "Read", "Write"]
    assert line.endswith(" --topic t")
    assert "--resource-pattern-type" not in line


def test_acl_command_for_a_prefix_and_for_a_group():
    settings = settings_for("SASL_PLAINTEXT", PROJECTOR_BROKER_SASL_USERNAME="x")
    assert acl_command(settings, "topic", "app-", {"CREATE"}, prefixed=True).endswith(
        "--operation Create --topic app- --resource-pattern-type prefixed")
    assert acl_command(settings, "group", "app", {"READ"}).endswith("--operation Read --group app")


# --- what a failed connection means -----------------------------------------------------------


def tls_verify_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    return exc


@pytest.mark.parametrize("exc,kind,names", [
    # What aiokafka raises when the broker refuses the login (SaslAuthenticateResponse error 58).
    (kafka_errors.SaslAuthenticationFailed("Authentication failed during authentication due to invalid "
                                           "credentials with SASL mechanism SCRAM-SHA-512"),
     "authentication", ["PROJECTOR_BROKER_SASL_USERNAME", "'alice'", "SCRAM-SHA-512"]),
    (kafka_errors.UnsupportedSaslMechanismError("Kafka broker does not support SCRAM-SHA-512 sasl mechanism"),
     "authentication", ["PROJECTOR_BROKER_SASL_MECHANISM"]),
    (ConnectionRefusedError(111, "Connection refused"), "unreachable", ["PROJECTOR_BROKER", "Connection refused"]),
    (asyncio.TimeoutError(), "protocol", ["PROJECTOR_BROKER_SECURITY_PROTOCOL", "now SASL_SSL"]),
    (kafka_errors.KafkaConnectionError("Connection at k1:9093 closed"), "protocol",
     ["PROJECTOR_BROKER_SECURITY_PROTOCOL"]),
    (tls_verify_error(), "tls", ["PROJECTOR_BROKER_SSL_CAFILE", "self-signed certificate in certificate chain"]),
], ids=["login refused", "mechanism", "refused", "timeout", "closed", "certificate"])
def test_explain_names_the_setting_to_fix(exc, kind, names):
    settings = settings_for("SASL_SSL", PROJECTOR_BROKER_SASL_MECHANISM="SCRAM-SHA-512")
    error = _explain(settings, "k1:9093", exc)
    assert error.kind == kind
    message = str(error)
    assert "k1:9093" in message
    assert [name for name in names if name not in message] == []
    assert PASSWORD not in message


@pytest.mark.parametrize("reason,hint", [("WRONG_VERSION_NUMBER", "PLAINTEXT"),
                                         ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "PROJECTOR_BROKER_SSL_CERTFILE")])
def test_explain_tls_handshake_failures(reason, hint):
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason  # set by the ssl module on the errors it raises
    error = _explain(settings_for("SSL"), "k1:9093", exc)
    assert error.kind == "tls"
    assert reason in str(error) and hint in str(error)


@pytest.mark.parametrize("exc,shown", [(asyncio.TimeoutError(), "no answer"),
                                       (ConnectionRefusedError(), "ConnectionRefusedError")],
                         ids=["timeout", "refused"])
def test_explain_says_something_of_an_exception_without_a_message(exc, shown):
    assert shown in str(_explain(settings_for("PLAINTEXT"), "k1:9093", exc))


def test_probe_of_a_closed_port_says_unreachable():
    with socket.socket() as sock:  # a port nothing listens on: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings.from_env({"PROJECTOR_BROKER": f"kafka://127.0.0.1:{port}"})
    with pytest.raises(BrokerError) as info:
        asyncio.run(probe(settings, timeout=2.0))
    assert info.value.kind == "unreachable"
    assert f"127.0.0.1:{port}" in str(info.value)


# --- repeated client log lines -------------------------------------------------------------


def record(msg: str, created: float, name: str = "aiokafka.conn", args: tuple = ()) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)
    rec.created = created
    return rec


def test_a_repeated_message_passes_once_per_period_then_with_the_number_held_back():
    repeat = RepeatFilter(every=30.0)
    msg = "Unable connect to node with id %s: %s"
    first = record(msg, 1000.0, args=(1, "refused"))
    assert repeat.filter(first) and first.getMessage() == "Unable connect to node with id 1: refused"
    assert [repeat.filter(record(msg, t, args=(1, "refused"))) for t in (1001.0, 1010.0, 1029.9)] == [False] * 3
    later = record(msg, 1031.0, args=(2, "refused"))
    assert repeat.filter(later)
    assert later.getMessage() == "Unable connect to node with id 2: refused [and 3 more like it in the last 31 s]"
    # The period restarts at each pass, and so does the count.
    assert not repeat.filter(record(msg, 1060.0, args=(1, "refused")))
    last = record(msg, 1061.0, args=(1, "refused"))
    assert repeat.filter(last)
    assert last.getMessage() == "Unable connect to node with id 1: refused [and 1 more like it in the last 30 s]"


def test_a_message_not_repeated_within_the_period_passes_unchanged():
    repeat = RepeatFilter(every=30.0)
    assert repeat.filter(record("boom", 1000.0))
    again = record("boom", 1100.0)
    assert repeat.filter(again) and again.getMessage() == "boom"


def test_different_messages_and_loggers_pass_independently():
    repeat = RepeatFilter(every=30.0)
    assert repeat.filter(record("one", 1000.0))
    assert repeat.filter(record("two", 1000.1))
    assert repeat.filter(record("one", 1000.2, name="aiokafka.consumer"))
    assert not repeat.filter(record("one", 1000.3))
    assert not repeat.filter(record("two", 1000.4))


# --- whether Kafka is reachable -----------------------------------------------------------


RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_broker_watch_snapshot_starts_reachable_since_now():
    before = time.time()
    snapshot = BrokerWatch(Settings()).snapshot()
    assert snapshot.keys() == {"reachable", "since"}
    assert snapshot["reachable"] is True
    assert RFC3339_UTC.fullmatch(snapshot["since"])
    since = datetime.fromisoformat(snapshot["since"].replace("Z", "+00:00")).timestamp()
    assert before - 1 <= since <= time.time()


def test_broker_watch_snapshot_is_in_utc():
    watch = BrokerWatch(Settings())
    watch.since = 86400.0 + 3600 + 60 + 1.7
    assert watch.snapshot()["since"] == "1970-01-02T01:01:01Z"


def test_broker_watch_notes_when_kafka_goes_away_and_comes_back():
    watch = BrokerWatch(Settings())
    watch.since = 0.0
    watch._note(False, "boom")
    snapshot = watch.snapshot()
    assert (snapshot["reachable"], snapshot["error"]) == (False, "boom")
    assert snapshot["since"] != "1970-01-01T00:00:00Z"
    assert time.time() - watch.since < 5
    went_away = watch.since
    watch._note(False, "still boom")  # no change of state: since stays
    assert (watch.since, watch.snapshot()["error"]) == (went_away, "still boom")
    watch._note(True)
    assert watch.snapshot().keys() == {"reachable", "since"} and watch.reachable and watch.error is None
