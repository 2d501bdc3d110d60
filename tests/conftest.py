"""Fixtures: one real Kafka broker per session, unique names per test, worker processes."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Worker, free_base, free_port, run_kafka_sh  # noqa: E402


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real broker: $PROJECTOR_TEST_BROKER, or one started for this session."""
    existing = os.environ.get("PROJECTOR_TEST_BROKER")
    if existing:
        yield existing.replace("kafka://", "")
        return
    port = free_port(pair_offset=100)
    env = {"KAFKA_RUN_DIR": str(tmp_path_factory.mktemp("kafka-single")), "KAFKA_PORT": str(port)}
    run_kafka_sh("start", env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        run_kafka_sh("stop", env=env, check=False)


@dataclass
class SecureKafka:
    """The broker of ``deploy/kafka/kafka.sh --mode secure``: SASL_SSL on ``base``, mutual TLS on base+1,
    SASL_PLAINTEXT on base+2; users admin, projector and outsider (no ACLs)."""

    run_dir: Path
    base: int
    env: dict[str, str]

    def password_file(self, user: str) -> Path:
        return self.run_dir / "secrets" / f"{user}.password"

    def tls(self, name: str) -> str:
        return str(self.run_dir / "tls" / name)

    def grant(self, principal: str, app_id: str, events: str, control: str) -> str:
        """The ACLs a worker needs (kafka.sh grant); returns the kafka-acls.sh lines it printed."""
        return run_kafka_sh("--mode", "secure", "grant", principal, app_id, events, control, env=self.env).stdout


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """One secured broker for the session, started by the first test that asks for it."""
    base = free_base(3)  # base..base+2 and base+100 (the controller) must be free
    run_dir = tmp_path_factory.mktemp("kafka-secure")
    env = {"KAFKA_RUN_DIR": str(run_dir), "KAFKA_PORT": str(base)}
    run_kafka_sh("--mode", "secure", "start", env=env)
    try:
        yield SecureKafka(run_dir, base, env)
    finally:
        run_kafka_sh("--mode", "secure", "stop", env=env, check=False)


@pytest.fixture
def names() -> dict[str, str]:
    """Unique topic names and app id for one test."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    return {
        "app_id": tag,
        "events": f"{tag}-events",
        "control": f"{tag}-control",
    }


@pytest.fixture
def worker_factory(kafka_bootstrap: str, names: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start real ``projector worker`` processes sharing this test's app id and topics."""
    workers: list[Worker] = []

    def make(name: str | None = None, partitions: int = 4, extra_env: dict[str, str] | None = None,
             start: bool = True) -> Worker:
        name = name or f"worker{len(workers) + 1}"
        port = free_port()
        data_dir = tmp_path / name / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "PROJECTOR_BROKER": f"kafka://{kafka_bootstrap}",
                "PROJECTOR_APP_ID": names["app_id"],
                "PROJECTOR_EVENTS_TOPIC": names["events"],
                "PROJECTOR_CONTROL_TOPIC": names["control"],
                "PROJECTOR_PARTITIONS": str(partitions),
                "PROJECTOR_DATA_DIR": str(data_dir),
                "PROJECTOR_WEB_HOST": "127.0.0.1",
                "PROJECTOR_WEB_PORT": str(port),
            }
        )
        env.pop("PROJECTOR_API_TOKEN", None)
        env.pop("PROJECTOR_ADMIN_TOKEN", None)
        env.pop("PROJECTOR_PEER_TOKEN", None)
        env.update(extra_env or {})
        worker = Worker(name, env, data_dir, port, tmp_path / f"{name}.log")
        workers.append(worker)
        if start:
            worker.start()
        return worker

    yield make
    # SIGTERM them all first, then wait: each stop (a clean hand-over) takes seconds.
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.stop()
