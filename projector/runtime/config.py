"""Configuration from the environment (CONTRACT §1)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from projector.core.engine import MAX_RECORD_BYTES
from projector.runtime.errors import ConfigError


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(env: Mapping[str, str], name: str, default: int) -> int:
    """Seconds: an integer, or one with a unit (``90s``, ``30m``, ``12h``, ``7d``)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    number, unit = (raw[:-1], raw[-1].lower()) if raw[-1].lower() in _UNITS else (raw, "s")
    try:
        value = int(number) * _UNITS[unit]
    except ValueError:
        raise ConfigError(f"{name} must be a duration in seconds, or with a unit (90s, 30m, 12h, 7d), "
                          f"got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1 second, got {raw!r}")
    return value


def broker_reachable(hostport: str, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    import socket

    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def parse_brokers(raw: str) -> list[str]:
    """``kafka://h1:9092,h2:9092`` (or without the scheme) -> ``["h1:9092", "h2:9092"]``."""
    hosts = []
    for part in raw.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "://" in part:
            scheme, _, part = part.partition("://")
            if scheme != "kafka":
                raise ConfigError(
                    f"PROJECTOR_BROKER: only kafka:// URLs are supported, got {scheme}://"
                )
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"PROJECTOR_BROKER: expected host:port, got {part!r}")
        hosts.append(f"{host}:{port}")
    if not hosts:
        raise ConfigError("PROJECTOR_BROKER is empty")
    return hosts


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _readable_file(env: Mapping[str, str], name: str) -> Optional[str]:
    """The path in ``name``, which must be a readable file; None when unset."""
    path = (env.get(name) or "").strip()
    if not path:
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}={path}: cannot read it ({exc.strerror or exc})") from None
    return path


def _secret(env: Mapping[str, str], name: str) -> Optional[str]:
    """The secret in ``name``, or read from the file that ``name``_FILE names (a mounted Secret); None when unset.

    Setting both is an error; so is a ``_FILE`` that cannot be read or holds nothing. One line
    end is dropped from the file: one written by ``echo`` has it, a Kubernetes Secret's has not.
    """
    file_name = f"{name}_FILE"
    value = env.get(name) or None
    path = _readable_file(env, file_name)
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"set {name} or {file_name}, not both")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ConfigError(f"{file_name}={path}: cannot read it (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{file_name}={path}: cannot read it ({exc.strerror or exc})") from None
    if not value:
        raise ConfigError(f"{file_name}={path} is empty")
    return value


@functools.lru_cache(maxsize=None)
def tls_context(cafile: Optional[str], certfile: Optional[str], keyfile: Optional[str]) -> ssl.SSLContext:
    """The TLS context of every Kafka connection; ConfigError when a file is not what it should be.

    A CA file replaces the system's CAs (as Kafka's truststore does), it does not add to them.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    try:
        if cafile:
            context.load_verify_locations(cafile=cafile)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"PROJECTOR_BROKER_SSL_CAFILE={cafile} is not a PEM file of CA certificates: {exc}") from None
    try:
        if certfile:
            context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"PROJECTOR_BROKER_SSL_CERTFILE={certfile} and PROJECTOR_BROKER_SSL_KEYFILE={keyfile or '(unset)'} are "
            f"not a PEM certificate and its unencrypted private key: {exc}") from None
    return context


@dataclass(frozen=True)
class BrokerSecurity:
    """How every Kafka client of projector authenticates and encrypts (Kafka's ``security.protocol``).

    The password is left out of ``repr`` and of :meth:`describe`: it is never logged or shown.
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: Optional[str] = None
    sasl_password: Optional[str] = field(default=None, repr=False)
    ssl_cafile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "BrokerSecurity":
        protocol = (env.get("PROJECTOR_BROKER_SECURITY_PROTOCOL") or "").strip().upper() or cls.protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"PROJECTOR_BROKER_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}")
        mechanism = (env.get("PROJECTOR_BROKER_SASL_MECHANISM") or "").strip().upper() or cls.sasl_mechanism
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"PROJECTOR_BROKER_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, got {mechanism!r}")
        username = env.get("PROJECTOR_BROKER_SASL_USERNAME") or None
        password = _secret(env, "PROJECTOR_BROKER_SASL_PASSWORD")
        password_file = (env.get("PROJECTOR_BROKER_SASL_PASSWORD_FILE") or "").strip() or None
        sasl_given = [name for name, value in (
            ("PROJECTOR_BROKER_SASL_USERNAME", username),
            ("PROJECTOR_BROKER_SASL_PASSWORD_FILE" if password_file else "PROJECTOR_BROKER_SASL_PASSWORD", password),
        ) if value]
        if protocol.startswith("SASL_"):
            missing = [n for n in ("PROJECTOR_BROKER_SASL_USERNAME", "PROJECTOR_BROKER_SASL_PASSWORD")
                       if not any(g.startswith(n) for g in sasl_given)]
            if missing:
                raise ConfigError(f"PROJECTOR_BROKER_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)} "
                                  "(or PROJECTOR_BROKER_SASL_PASSWORD_FILE)")
        elif sasl_given:
            raise ConfigError(f"{sasl_given[0]} is set, but PROJECTOR_BROKER_SECURITY_PROTOCOL is {protocol}: "
                              "use SASL_SSL (or SASL_PLAINTEXT) to log in with a user name and password")
        cafile = _readable_file(env, "PROJECTOR_BROKER_SSL_CAFILE")
        certfile = _readable_file(env, "PROJECTOR_BROKER_SSL_CERTFILE")
        keyfile = _readable_file(env, "PROJECTOR_BROKER_SSL_KEYFILE")
        ssl_given = [name for name, value in (("PROJECTOR_BROKER_SSL_CAFILE", cafile),
                                              ("PROJECTOR_BROKER_SSL_CERTFILE", certfile),
                                              ("PROJECTOR_BROKER_SSL_KEYFILE", keyfile)) if value]
        if ssl_given and protocol not in ("SSL", "SASL_SSL"):
            raise ConfigError(f"{ssl_given[0]} is set, but PROJECTOR_BROKER_SECURITY_PROTOCOL is {protocol}: "
                              "use SSL or SASL_SSL to connect with TLS")
        if keyfile and not certfile:
            raise ConfigError("PROJECTOR_BROKER_SSL_KEYFILE is set without PROJECTOR_BROKER_SSL_CERTFILE "
                              "(the client certificate for mutual TLS)")
        if protocol in ("SSL", "SASL_SSL"):
            tls_context(cafile, certfile, keyfile)  # unusable files fail here, with the variable's name
        return cls(protocol, mechanism, username, password, cafile, certfile, keyfile)

    def describe(self) -> str:
        """What a log line or /status may say about it: never the password."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.uses_ssl:
            parts.append(f"CA {self.ssl_cafile or 'the system CAs'}")
            if self.ssl_certfile:
                parts.append(f"client certificate {self.ssl_certfile}")
        return ", ".join(parts)


#: What Kafka takes as a group instance id (its own check: ASCII letters, digits, ``.``, ``_``, ``-``; at most 249).
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")
#: PROJECTOR_INSTANCE_ID values that turn static group membership off.
INSTANCE_ID_OFF = ("none", "off")


def default_instance_id(web_port: int, hostname: Optional[str] = None) -> str:
    """The host name and the web port: ``worker-0-6066``.

    The host name alone would do for one worker per host (a StatefulSet pod's
    host name is its pod name, kept across restarts); the port keeps several
    workers on one host (tests, the demo, the bench) from taking each other's
    identity, while a worker restarted on its own port keeps its own. Characters
    Kafka does not take in an instance id become ``_``.
    """
    host = hostname if hostname is not None else socket.gethostname()
    suffix = f"-{web_port}"
    host = re.sub(r"[^A-Za-z0-9._-]", "_", host)[: 249 - len(suffix)] or "projector"
    return host + suffix


def leave_on_stop_from_env(env: Mapping[str, str]) -> bool:
    """PROJECTOR_LEAVE_ON_STOP: whether a clean stop (SIGTERM) leaves the consumer group at once (default true).

    ``false`` keeps a static member's place, as Kafka Streams does: a worker
    stopped and started again within the session timeout (a rolling update)
    takes its partitions back without a rebalance, while they wait for it.
    """
    raw = (env.get("PROJECTOR_LEAVE_ON_STOP") or "").strip().lower()
    if raw in ("", "true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ConfigError(f"PROJECTOR_LEAVE_ON_STOP must be true or false, got {env.get('PROJECTOR_LEAVE_ON_STOP')!r}")


def instance_id_from_env(env: Mapping[str, str], web_port: int) -> Optional[str]:
    """PROJECTOR_INSTANCE_ID: the worker's static group membership id; None (``none`` or ``off``) turns it off.

    Unset or empty: :func:`default_instance_id`.
    """
    raw = (env.get("PROJECTOR_INSTANCE_ID") or "").strip()
    if not raw:
        return default_instance_id(web_port)
    if raw.lower() in INSTANCE_ID_OFF:
        return None
    if not _INSTANCE_ID.fullmatch(raw) or raw in (".", ".."):
        raise ConfigError(
            f"PROJECTOR_INSTANCE_ID must be 1 to 249 ASCII letters, digits, '.', '_' or '-' (Kafka's rule for a "
            f"group instance id), got {raw!r}; 'none' turns static group membership off")
    return raw


@dataclass(frozen=True)
class Settings:
    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "projector"
    events_topic: str = "events"
    control_topic: str = "control"
    partitions: int = 8
    data_dir: Path = Path("./data")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: The address the HTTP server listens on (PROJECTOR_WEB_BIND); None: web_host.
    web_bind: Optional[str] = None
    security: BrokerSecurity = BrokerSecurity()
    api_token: Optional[str] = field(default=None, repr=False)
    admin_token: Optional[str] = field(default=None, repr=False)
    #: The secret workers of one app id show each other (PROJECTOR_PEER_TOKEN); None: derived (see peer_secret).
    peer_token: Optional[str] = field(default=None, repr=False)
    #: Requests one worker keeps parked at once (read-your-writes and /control waits); more get 503.
    max_parked: int = 1000
    #: Long-polls one worker forwards to others at once (its own connection pool); more get 503.
    max_forwarded_waits: int = 64
    # Not in the contract: replication factor for topics projector creates, and
    # their min.insync.replicas. Unset (auto), a worker picks min(3, brokers), and
    # 2 in-sync replicas once the factor is 3 (see topics.resolve_replication).
    replication_factor: int = 1
    replication_auto: bool = True
    min_insync_replicas: Optional[int] = None
    # Standby replicas of each table partition kept by other workers (Faust's table_standby_replicas).
    standby_replicas: int = 1
    #: How long a command id's answer is kept (PROJECTOR_COMMAND_ID_TTL, seconds): the same id within it is
    #: answered again and never applied twice; after it, it is a new command.
    command_id_ttl: int = 7 * 86400
    # The most bytes of one record a worker writes (changelogs, repartition topics,
    # dead letters): MAX_RECORD_BYTES, lowered at start to what the topics take
    # (topics.record_limit).
    max_record_bytes: int = MAX_RECORD_BYTES
    #: ``auto``: a new read-model version takes over once it is built; ``manual``: once
    #: ``POST /tables/{table}/cutover`` asks for it (PROJECTOR_CUTOVER).
    cutover: str = "auto"
    #: Why the events topic may lose events (its retention settings), found at start; None when it keeps them.
    retention_warning: Optional[str] = None
    #: The worker's group instance id (PROJECTOR_INSTANCE_ID): static group membership, so a worker restarted
    #: within the session timeout takes its partitions back without a rebalance. None: dynamic membership.
    instance_id: Optional[str] = None
    #: Whether a clean stop leaves the group at once (PROJECTOR_LEAVE_ON_STOP); false keeps a static member's place.
    leave_on_stop: bool = True

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if env is None else env
        broker = env.get("PROJECTOR_BROKER") or cls.broker
        parse_brokers(broker)  # fail early with a clear message
        settings = cls(
            broker=broker,
            app_id=env.get("PROJECTOR_APP_ID") or cls.app_id,
            events_topic=env.get("PROJECTOR_EVENTS_TOPIC") or cls.events_topic,
            control_topic=env.get("PROJECTOR_CONTROL_TOPIC") or cls.control_topic,
            partitions=_int(env, "PROJECTOR_PARTITIONS", cls.partitions),
            data_dir=Path(env.get("PROJECTOR_DATA_DIR") or cls.data_dir),
            web_host=env.get("PROJECTOR_WEB_HOST") or cls.web_host,
            web_port=_int(env, "PROJECTOR_WEB_PORT", cls.web_port),
            web_bind=(env.get("PROJECTOR_WEB_BIND") or "").strip() or None,
            security=BrokerSecurity.from_env(env),
            api_token=_secret(env, "PROJECTOR_API_TOKEN"),
            admin_token=_secret(env, "PROJECTOR_ADMIN_TOKEN"),
            peer_token=_secret(env, "PROJECTOR_PEER_TOKEN"),
            max_parked=_int(env, "PROJECTOR_MAX_PARKED", 1000, minimum=1),
            max_forwarded_waits=_int(env, "PROJECTOR_MAX_FORWARDED_WAITS", 64, minimum=1),
            replication_factor=_int(env, "PROJECTOR_REPLICATION_FACTOR", 1),
            replication_auto=not (env.get("PROJECTOR_REPLICATION_FACTOR") or "").strip(),
            min_insync_replicas=_int(env, "PROJECTOR_MIN_INSYNC_REPLICAS", 0) or None,
            standby_replicas=_int(env, "PROJECTOR_STANDBY_REPLICAS", 1, minimum=0),
            command_id_ttl=_duration(env, "PROJECTOR_COMMAND_ID_TTL", cls.command_id_ttl),
            cutover=(env.get("PROJECTOR_CUTOVER") or "auto").strip().lower(),
        )
        if settings.cutover not in ("auto", "manual"):
            raise ConfigError(f"PROJECTOR_CUTOVER must be auto or manual, got {env.get('PROJECTOR_CUTOVER')!r}")
        if settings.web_port > 65535:
            raise ConfigError(f"PROJECTOR_WEB_PORT must be a TCP port, got {settings.web_port}")
        settings = dataclasses.replace(settings, instance_id=instance_id_from_env(env, settings.web_port),
                                       leave_on_stop=leave_on_stop_from_env(env))
        if settings.events_topic == settings.control_topic:
            raise ConfigError("PROJECTOR_EVENTS_TOPIC and PROJECTOR_CONTROL_TOPIC must differ")
        return settings

    @property
    def bootstrap_servers(self) -> list[str]:
        return parse_brokers(self.broker)

    @property
    def faust_broker(self) -> list[str]:
        return [f"kafka://{hp}" for hp in self.bootstrap_servers]

    @property
    def deadletter_topic(self) -> str:
        return f"{self.events_topic}.deadletter"

    @property
    def bind_address(self) -> str:
        """Where the HTTP server listens: PROJECTOR_WEB_BIND, else the advertised host."""
        return self.web_bind or self.web_host

    @property
    def peer_secret(self) -> Optional[str]:
        """The token one worker shows another: PROJECTOR_PEER_TOKEN, else derived from the API token.

        Derived: HMAC-SHA256(key=API token, "projector-peer/" + app id), hex; with
        no API token, from the admin token the same way; None when no token is set.
        It is never the API or admin token itself, so a worker never hands those on.
        """
        if self.peer_token:
            return self.peer_token
        base = self.api_token or self.admin_token
        if not base:
            return None
        return hmac.new(base.encode(), f"projector-peer/{self.app_id}".encode(), hashlib.sha256).hexdigest()

    @property
    def url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"
