"""Fixtures: one real Kafka broker per session, unique names per test, worker processes."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Worker, free_port, run_kafka_sh  # noqa: E402


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
        env.update(extra_env or {})
        worker = Worker(name, env, data_dir, port, tmp_path / f"{name}.log")
        workers.append(worker)
        if start:
            worker.start()
        return worker

    yield make
    for worker in workers:
        worker.stop()
