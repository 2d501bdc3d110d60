"""How projector talks to Kafka: one set of connection settings for every client,
no topic ever created by asking about it, and errors that say what to fix.

- :func:`client_options`, :func:`faust_credentials` and :func:`librdkafka_config`
  turn :class:`~projector.runtime.config.BrokerSecurity` into what aiokafka, Faust and
  confluent-kafka take. The worker, the CLI, the demo and the bench all use them.
- Importing this module makes every aiokafka metadata request say
  ``allow_auto_topic_creation=false``. On a broker with Kafka's default
  ``auto.create.topics.enable=true``, a metadata request for a missing topic
  (an admin client's ``describe_topics``, a consumer assigned to it, a producer
  sending to it) would otherwise create it with the broker's defaults: one
  partition and ``cleanup.policy=delete``. Missing topics are created by
  :mod:`projector.runtime.topics`, with the settings they need, and by nothing else.
- :func:`probe` connects the way every client will (TLS, SASL) and turns what
  goes wrong into a :class:`BrokerError` that names the setting to fix.
- :func:`describe_topics` and :func:`group_operations` ask the broker which
  operations it allows this principal on each topic and on the consumer group
  (Metadata v8 and DescribeGroups v3 with authorized operations), so a missing
  ACL stops a worker at start (:mod:`projector.runtime.topics`) with the principal, the
  operation, the resource and the ``kafka-acls.sh`` command, instead of failing
  somewhere inside Faust.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import aiokafka.admin.client as _aiokafka_admin
import aiokafka.client as _aiokafka_client
from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from projector.runtime.config import BrokerSecurity, Settings, tls_context
from projector.runtime.errors import BrokerError

log = logging.getLogger(__name__)

#: How long a control write, a release or a command's first send waits for Kafka before answering 504.
KAFKA_WRITE_TIMEOUT = 10.0


# --- no topic is ever created by a metadata request ------------------------------------


def _metadata_request(topics: Optional[list[str]] = None, allow_auto_topic_creation: bool = False) -> MetadataRequest:
    return MetadataRequest(topics, allow_auto_topic_creation=allow_auto_topic_creation)


# aiokafka's clients build every metadata request through these two names.
_aiokafka_client.MetadataRequest = _metadata_request  # type: ignore[assignment]
_aiokafka_admin.MetadataRequest = _metadata_request  # type: ignore[assignment]


# --- client settings ---------------------------------------------------------------------


def ssl_context(security: BrokerSecurity) -> Optional[ssl.SSLContext]:
    """The TLS context of every connection (None without TLS); raises ConfigError for unusable files."""
    if not security.uses_ssl:
        return None
    return tls_context(security.ssl_cafile, security.ssl_certfile, security.ssl_keyfile)


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: the bootstrap servers and the security settings."""
    security = settings.security
    options: dict[str, Any] = {
        "bootstrap_servers": ",".join(settings.bootstrap_servers),
        "security_protocol": security.protocol,
    }
    if security.uses_ssl:
        options["ssl_context"] = ssl_context(security)
    if security.uses_sasl:
        options.update(sasl_mechanism=security.sasl_mechanism, sasl_plain_username=security.sasl_username,
                       sasl_plain_password=security.sasl_password)
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for these settings (None for PLAINTEXT)."""
    import faust

    security = settings.security
    context = ssl_context(security)
    if security.uses_sasl:
        return faust.SASLCredentials(username=security.sasl_username, password=security.sasl_password,
                                     mechanism=security.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """The same settings for confluent-kafka (librdkafka) clients: Quix Streams and the bench's raw loop."""
    security = settings.security
    config = {"bootstrap.servers": ",".join(settings.bootstrap_servers), "security.protocol": security.protocol}
    if security.uses_sasl:
        config.update({"sasl.mechanism": security.sasl_mechanism, "sasl.username": security.sasl_username or "",
                       "sasl.password": security.sasl_password or ""})
    if security.uses_ssl:
        if security.ssl_cafile:
            config["ssl.ca.location"] = security.ssl_cafile
        if security.ssl_certfile:
            config["ssl.certificate.location"] = security.ssl_certfile
        if security.ssl_keyfile:
            config["ssl.key.location"] = security.ssl_keyfile
    return config


def settings_for(broker: str) -> Settings:
    """Settings for a tool given its own ``--broker``: the security settings still come from PROJECTOR_BROKER_*."""
    import os

    return Settings.from_env({**os.environ, "PROJECTOR_BROKER": broker})


def principal(settings: Settings) -> str:
    """Who the broker sees, as its ACLs name it (as far as the client can tell)."""
    security = settings.security
    if security.uses_sasl:
        return f"User:{security.sasl_username}"
    if security.ssl_certfile:
        return f"the principal of the client certificate {_certificate_subject(security.ssl_certfile)}"
    return "User:ANONYMOUS"


def _certificate_subject(path: str) -> str:
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except Exception as exc:  # not decodable here: name the file instead
        log.debug("cannot read the subject of %s: %r", path, exc)
        return path
    names = {"commonName": "CN", "organizationalUnitName": "OU", "organizationName": "O", "countryName": "C",
             "localityName": "L", "stateOrProvinceName": "ST"}
    parts = [f"{names.get(k, k)}={v}" for rdn in reversed(decoded.get("subject", ())) for k, v in rdn]
    return ",".join(parts) or path


# --- reaching the broker -----------------------------------------------------------------


def _explain(settings: Settings, host: str, exc: BaseException) -> BrokerError:
    """What a failed connection to ``host`` means, in terms of projector's settings."""
    security = settings.security
    if isinstance(exc, (kafka_errors.SaslAuthenticationFailed, kafka_errors.AuthenticationFailedError)):
        return BrokerError(
            "authentication",
            f"Kafka at {host} refused the login of user {security.sasl_username!r} with "
            f"{security.sasl_mechanism}: {exc}. Check PROJECTOR_BROKER_SASL_USERNAME, the password "
            "(PROJECTOR_BROKER_SASL_PASSWORD or PROJECTOR_BROKER_SASL_PASSWORD_FILE) and "
            "PROJECTOR_BROKER_SASL_MECHANISM.")
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        return BrokerError(
            "authentication",
            f"Kafka at {host} does not offer SASL mechanism {security.sasl_mechanism} on this listener: {exc}. "
            "Set PROJECTOR_BROKER_SASL_MECHANISM to one it offers.")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(
            "tls",
            f"TLS to Kafka at {host}: the broker's certificate was not accepted ({exc.verify_message}). "
            f"Set PROJECTOR_BROKER_SSL_CAFILE to the CA that signed it"
            f"{f' (now {security.ssl_cafile})' if security.ssl_cafile else ''}, and use the host name or "
            "address the certificate names in PROJECTOR_BROKER.")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "CERTIFICATE_REQUIRED" in reason.upper() or "HANDSHAKE_FAILURE" in reason.upper() \
                or "UNKNOWN_CA" in reason.upper() or "BAD_CERTIFICATE" in reason.upper():
            hint = ("the broker wants a client certificate it trusts (mutual TLS): set "
                    "PROJECTOR_BROKER_SSL_CERTFILE and PROJECTOR_BROKER_SSL_KEYFILE")
        elif "WRONG_VERSION_NUMBER" in reason.upper() or "RECORD_LAYER" in reason.upper():
            hint = ("the listener does not speak TLS: use PROJECTOR_BROKER_SECURITY_PROTOCOL=PLAINTEXT or "
                    "SASL_PLAINTEXT, or the broker's TLS port")
        else:
            hint = "check the TLS settings (PROJECTOR_BROKER_SSL_*) against the broker's listener"
        return BrokerError("tls", f"TLS handshake with Kafka at {host} failed ({reason}): {hint}.")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or (
            isinstance(exc, kafka_errors.KafkaConnectionError) and "closed" in str(exc).lower()):
        return BrokerError(
            "protocol",
            f"Kafka at {host} accepted the connection but did not answer as Kafka "
            f"({'no answer in time' if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else _describe(exc)}). "
            "If that listener uses TLS or SASL, set "
            f"PROJECTOR_BROKER_SECURITY_PROTOCOL to match it (now {security.protocol}).")
    return BrokerError(
        "unreachable",
        f"cannot reach Kafka at {host}: {_describe(exc)}. Is the broker running, and is "
        "PROJECTOR_BROKER right? (locally: deploy/kafka/kafka.sh start)")


async def probe(settings: Settings, timeout: float = 10.0) -> str:
    """Connect to the bootstrap servers as every client will; return the first that answers.

    Raises :class:`BrokerError`: when every server fails, the most telling
    failure (a refused login or a TLS problem before "unreachable").
    """
    options = client_options(settings)
    failures: list[BrokerError] = []
    for hostport in settings.bootstrap_servers:
        host, _, port = hostport.rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(
                host, int(port), client_id=f"{settings.app_id}-probe", request_timeout_ms=int(timeout * 1000),
                ssl_context=options.get("ssl_context"), security_protocol=settings.security.protocol,
                sasl_mechanism=options.get("sasl_mechanism"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            ), timeout)
        except Exception as exc:  # every way a connection fails becomes a BrokerError below
            failures.append(_explain(settings, hostport, exc))
            continue
        conn.close()
        return hostport
    order = ("authentication", "tls", "protocol", "unreachable")
    failures.sort(key=lambda f: order.index(f.kind))
    raise failures[0]


async def wait_for_broker(settings: Settings, deadline: float) -> str:
    """:func:`probe` until a server answers; an unreachable broker is retried until ``deadline`` (monotonic).

    A refused login or a TLS problem is not retried: it will not fix itself.
    """
    while True:
        try:
            return await probe(settings, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except BrokerError as exc:
            if exc.kind not in ("unreachable", "protocol") or time.monotonic() + 1.0 >= deadline:
                raise
            log.warning("%s Retrying.", exc)
            await asyncio.sleep(1.0)


# --- what the broker allows this principal --------------------------------------------

#: Kafka's ACL operations, by their code in authorized-operations bit fields.
OPERATIONS = {3: "READ", 4: "WRITE", 5: "CREATE", 6: "DELETE", 7: "ALTER", 8: "DESCRIBE", 9: "CLUSTER_ACTION",
              10: "DESCRIBE_CONFIGS", 11: "ALTER_CONFIGS", 12: "IDEMPOTENT_WRITE"}
#: ``kafka-acls.sh --operation`` spelling.
ACL_OPERATION = {"READ": "Read", "WRITE": "Write", "CREATE": "Create", "DESCRIBE": "Describe",
                 "DESCRIBE_CONFIGS": "DescribeConfigs", "IDEMPOTENT_WRITE": "IdempotentWrite"}
#: The broker did not say (an old broker, or not asked).
UNKNOWN_OPERATIONS = -2147483648


def operations(bits: int) -> Optional[frozenset[str]]:
    """The operations in an authorized-operations bit field (None: the broker did not say)."""
    if bits == UNKNOWN_OPERATIONS:
        return None
    return frozenset(name for code, name in OPERATIONS.items() if bits & (1 << code))


class _MetadataResponse_v8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(("node_id", Int32), ("host", String("utf-8")), ("port", Int32),
                          ("rack", String("utf-8")))),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        ("topics", Array(
            ("error_code", Int16),
            ("topic", String("utf-8")),
            ("is_internal", Boolean),
            ("partitions", Array(("error_code", Int16), ("partition", Int32), ("leader", Int32),
                                 ("leader_epoch", Int32), ("replicas", Array(Int32)), ("isr", Array(Int32)),
                                 ("offline_replicas", Array(Int32)))),
            ("topic_authorized_operations", Int32),
        )),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequest_v8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class TopicMetadataRequest(Request[_MetadataRequest_v8]):
    """Metadata of some topics, with the operations this principal may do on each; never creates one."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequest_v8]) -> _MetadataRequest_v8:
        return request_struct_class(self._topics, False, True, True)


class _DescribeGroupsRequest_v3(RequestStruct):
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3  # (aiokafka's own v3 request names the v2 response)
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class GroupOperationsRequest(Request[_DescribeGroupsRequest_v3]):
    """A consumer group's description, with the operations this principal may do on it."""

    API_KEY = 15

    def __init__(self, group: str) -> None:
        self._group = group

    def build(self, request_struct_class: type[_DescribeGroupsRequest_v3]) -> _DescribeGroupsRequest_v3:
        return request_struct_class([self._group], True)


@dataclass(frozen=True)
class TopicInfo:
    """One topic as the broker describes it to this principal."""

    name: str
    #: None: the topic does not exist; -1: this principal may not describe it.
    partitions: Optional[int]
    replication: int = 0
    #: What this principal may do on it (None: the broker did not say).
    allowed: Optional[frozenset[str]] = None

    @property
    def exists(self) -> bool:
        return self.partitions is not None and self.partitions >= 0

    @property
    def hidden(self) -> bool:
        return self.partitions == -1


async def describe_topics(admin: Any, names: Iterable[str]) -> dict[str, TopicInfo]:
    """Each of ``names`` as the broker sees it, without creating any (Metadata v8, no auto-creation)."""
    names = list(dict.fromkeys(names))
    response = await admin._send_request(TopicMetadataRequest(names))
    out: dict[str, TopicInfo] = {}
    for topic in response.topics:
        code, name, partitions, bits = topic[0], topic[1], topic[3], topic[4]
        if code == 0:
            out[name] = TopicInfo(name, len(partitions), len(partitions[0][4]) if partitions else 0, operations(bits))
        elif code == kafka_errors.TopicAuthorizationFailedError.errno:
            out[name] = TopicInfo(name, -1, allowed=frozenset())
        elif code == kafka_errors.UnknownTopicOrPartitionError.errno:
            out[name] = TopicInfo(name, None)
        else:
            raise kafka_errors.for_code(code)(f"describing topic {name!r}")
    for name in names:
        out.setdefault(name, TopicInfo(name, None))
    return out


async def group_operations(admin: Any, group: str, deadline: float) -> Optional[frozenset[str]]:
    """What this principal may do on consumer group ``group`` (an empty set: not even describe it).

    A broker that has just started has no group coordinator for a moment:
    asked again until ``deadline`` (monotonic).
    """
    retriable = (kafka_errors.GroupCoordinatorNotAvailableError, kafka_errors.GroupLoadInProgressError,
                 kafka_errors.NotCoordinatorForGroupError)
    while True:
        try:
            coordinator = await admin.find_coordinator(group)
            response = await admin._send_request_to_node(coordinator, GroupOperationsRequest(group))
            code, bits = response.groups[0][0], response.groups[0][-1]
            if code == kafka_errors.GroupAuthorizationFailedError.errno:
                return frozenset()
            if code != 0:
                raise kafka_errors.for_code(code)(f"describing consumer group {group!r}")
            return operations(bits)
        except kafka_errors.GroupAuthorizationFailedError:
            return frozenset()
        except retriable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def acl_command(settings: Settings, kind: str, name: str, ops: Iterable[str], prefixed: bool = False) -> str:
    """The ``kafka-acls.sh`` line that grants ``ops`` on a resource to this worker's principal."""
    who = principal(settings)
    if not who.startswith("User:"):
        who = "User:<the certificate's principal>"
    resource = {"topic": f"--topic {name}", "group": f"--group {name}", "cluster": "--cluster"}[kind]
    pattern = " --resource-pattern-type prefixed" if prefixed else ""
    operations_ = " ".join(f"--operation {ACL_OPERATION.get(op, op)}" for op in sorted(ops))
    return (f"kafka-acls.sh --bootstrap-server {settings.bootstrap_servers[0]} --command-config <admin.properties> "
            f"--add --allow-principal {who} {operations_} {resource}{pattern}")


def _describe(exc: BaseException) -> str:
    """``Class: message``, once (aiokafka's errors already start with their class name)."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


class RepeatFilter(logging.Filter):
    """Lets each message of a logger through at most once every ``every`` seconds.

    With the broker away, aiokafka logs the same few errors many times a
    second (every reconnect attempt of every client); one line each per
    period, with the number of lines held back, says as much.
    """

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._seen: dict[tuple[str, Any], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = record.created
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.every:
            if seen is not None and seen[1]:
                record.msg = f"{record.msg} [and {int(seen[1])} more like it in the last {now - seen[0]:.0f} s]"
            self._seen[key] = [now, 0]
            if len(self._seen) > 1000:
                self._seen.clear()
            return True
        seen[1] += 1
        return False


def quiet_repeated_client_logs(every: float = 30.0) -> None:
    """Put a :class:`RepeatFilter` on every aiokafka logger (call after aiokafka is imported)."""
    repeat = RepeatFilter(every)
    names = [n for n in logging.root.manager.loggerDict if n == "aiokafka" or n.startswith("aiokafka.")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(repeat)


class BrokerWatch:
    """Whether this worker can reach Kafka now, and since when (``/readyz``, ``/status``, ``/metrics``).

    A request is sent to a broker every ``interval`` seconds over one kept
    connection; no answer within ``timeout`` counts as unreachable.
    """

    def __init__(self, settings: Settings, interval: float = 2.0, timeout: float = 5.0) -> None:
        self.settings = settings
        self.interval = interval
        self.timeout = timeout
        self.reachable = True
        self.since = time.time()
        self.error: Optional[str] = None
        self._client: Any = None

    def snapshot(self) -> dict[str, Any]:
        from datetime import datetime, timezone

        out: dict[str, Any] = {
            "reachable": self.reachable,
            "since": datetime.fromtimestamp(self.since, timezone.utc).isoformat(timespec="seconds").replace(
                "+00:00", "Z"),
        }
        if not self.reachable:
            out["error"] = self.error
        return out

    def _note(self, reachable: bool, error: Optional[str] = None) -> None:
        if reachable != self.reachable:
            self.reachable, self.since = reachable, time.time()
            if reachable:
                log.warning("Kafka at %s is reachable again", self.settings.broker)
            else:
                log.error("Kafka at %s is unreachable: %s. Serving reads from local state; commands and control "
                          "writes answer 503 until it is back.", self.settings.broker, error)
        self.error = error

    async def check(self) -> bool:
        """Ask a broker once; update and return ``reachable``."""
        from aiokafka.client import AIOKafkaClient

        try:
            if self._client is None:
                options = client_options(self.settings)
                self._client = AIOKafkaClient(client_id=f"{self.settings.app_id}-watch",
                                              request_timeout_ms=int(self.timeout * 1000), **options)
                await asyncio.wait_for(self._client.bootstrap(), self.timeout)
            node = self._client.get_random_node()
            if node is None:
                raise kafka_errors.KafkaConnectionError("no broker known")
            await asyncio.wait_for(self._client.send(node, _metadata_request([])), self.timeout)
        except Exception as exc:  # any failure to get an answer means unreachable, for now
            if self._client is not None and not isinstance(exc, asyncio.TimeoutError):
                client, self._client = self._client, None
                await client.close()
            self._note(False, _describe(exc))
            return False
        self._note(True)
        return True

    async def run(self) -> None:
        try:
            while True:
                await self.check()
                await asyncio.sleep(self.interval)
        finally:
            if self._client is not None:
                await self._client.close()
