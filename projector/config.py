"""Configuration from the environment (CONTRACT §1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional


class ConfigError(ValueError):
    """A setting in the environment has a value projector cannot use."""


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
    api_token: Optional[str] = None
    admin_token: Optional[str] = None
    # Not in the contract: replication factor for topics projector creates, and
    # their min.insync.replicas. Unset (auto), a worker picks min(3, brokers), and
    # 2 in-sync replicas once the factor is 3 (see topics.resolve_replication).
    replication_factor: int = 1
    replication_auto: bool = True
    min_insync_replicas: Optional[int] = None
    # Standby replicas of each table partition kept by other workers (Faust's table_standby_replicas).
    standby_replicas: int = 1

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
            api_token=env.get("PROJECTOR_API_TOKEN") or None,
            admin_token=env.get("PROJECTOR_ADMIN_TOKEN") or None,
            replication_factor=_int(env, "PROJECTOR_REPLICATION_FACTOR", 1),
            replication_auto=not (env.get("PROJECTOR_REPLICATION_FACTOR") or "").strip(),
            min_insync_replicas=_int(env, "PROJECTOR_MIN_INSYNC_REPLICAS", 0) or None,
            standby_replicas=_int(env, "PROJECTOR_STANDBY_REPLICAS", 1, minimum=0),
        )
        if settings.web_port > 65535:
            raise ConfigError(f"PROJECTOR_WEB_PORT must be a TCP port, got {settings.web_port}")
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
    def url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"
