"""deploy/kafka/kafka.sh --mode secure: SASL and mutual TLS let the right principals in, ACLs keep others out."""

from __future__ import annotations

import asyncio
import stat
import uuid
from pathlib import Path

import pytest
from support import run_kafka_sh

pytestmark = pytest.mark.integration


async def _roundtrip(client: dict, topic: str) -> bool:
    """Idempotent produce of a marker to topic, then read it back in group 'projector'."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(**client, acks="all", enable_idempotence=True, request_timeout_ms=10000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, marker)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **client, group_id="projector", auto_offset_reset="earliest",
                                enable_auto_commit=False, request_timeout_ms=10000)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                if any(r.value == marker for r in records):
                    return True
        return False
    finally:
        await consumer.stop()


async def _checks(run: Path, base: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, TopicAuthorizationFailedError
    from aiokafka.helpers import create_ssl_context

    tls = run / "tls"

    def scram(user: str, password: str | None = None) -> dict:
        return dict(security_protocol="SASL_SSL", ssl_context=create_ssl_context(cafile=str(tls / "ca.pem")),
                    sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=user,
                    sasl_plain_password=password or (run / "secrets" / f"{user}.password").read_text())

    def sasl_ssl(user: str) -> dict:
        return dict(bootstrap_servers=f"127.0.0.1:{base}", **scram(user))

    def mtls(user: str) -> dict:
        ctx = create_ssl_context(cafile=str(tls / "ca.pem"), certfile=str(tls / f"{user}.pem"),
                                 keyfile=str(tls / f"{user}.key"))
        return dict(bootstrap_servers=f"127.0.0.1:{base + 1}", security_protocol="SSL", ssl_context=ctx)

    async def create_topic(client: dict, name: str) -> int:
        admin = AIOKafkaAdminClient(**client, request_timeout_ms=10000)
        await admin.start()
        try:
            response = await admin.create_topics([NewTopic(name, 1, 1)])
        finally:
            await admin.close()
        [(topic, code, _message)] = response.topic_errors
        assert topic == name
        return code

    # The ACLs of the first start: projector may create its topics, write and read them.
    assert await create_topic(sasl_ssl("projector"), "events") == 0
    assert await _roundtrip(sasl_ssl("projector"), "events"), "projector (SCRAM-SHA-512) did not read back its record"
    assert await _roundtrip(mtls("projector"), "events"), "projector (client certificate) did not read back its record"

    # outsider authenticates, but has no ACLs: CreateTopics answers TOPIC_AUTHORIZATION_FAILED (29), produce raises.
    assert await create_topic(sasl_ssl("outsider"), "projector-foo") == 29
    producer = AIOKafkaProducer(**sasl_ssl("outsider"), request_timeout_ms=10000)
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("events", b"x")
    finally:
        await producer.stop()

    # A wrong password: a client's start() only says KafkaConnectionError("Unable to bootstrap ..."),
    # the connection itself tells why.
    with pytest.raises(SaslAuthenticationFailed, match="invalid credentials"):
        (await create_conn("127.0.0.1", base, **scram("projector", "wrong"))).close()
    # No client certificate on the mutual-TLS listener: the broker ends the handshake.
    with pytest.raises(KafkaConnectionError):
        (await create_conn("127.0.0.1", base + 1, security_protocol="SSL",
                           ssl_context=create_ssl_context(cafile=str(tls / "ca.pem")))).close()


def test_secure_mode_lets_projector_in_and_keeps_others_out(secure_kafka):
    run, base, env = secure_kafka.run_dir, secure_kafka.base, secure_kafka.env
    listed = run_kafka_sh("--mode", "secure", "acls", env=env).stdout
    # The first start granted User:projector what a worker with the default names needs.
    for resource in ("name=projector-, patternType=PREFIXED", "name=events, patternType=LITERAL",
                     "name=control, patternType=LITERAL", "name=events.deadletter, patternType=LITERAL",
                     "resourceType=GROUP, name=projector, patternType=LITERAL", "resourceType=CLUSTER"):
        assert resource in listed, (resource, listed)
    assert "principal=User:outsider" not in listed
    assert [run_kafka_sh("--mode", "secure", "bootstrap", *listener, env=env).stdout.strip()
            for listener in ((), ("ssl",), ("sasl_plaintext",))] == [
        f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 2}"]
    for secret in [*run.glob("secrets/*.password"), *run.glob("tls/*.key"), run / "admin.properties"]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    password = (run / "secrets" / "projector.password").read_text()
    assert password and not password.endswith("\n")
    asyncio.run(_checks(run, base))
