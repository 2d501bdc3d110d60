"""deploy/kafka/kafka.sh: lifecycle of a single node, a busy port, and the 3-node cluster under kill -9."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from support import free_base, run_kafka_sh, wait_for

pytestmark = pytest.mark.integration


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def pids(run_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(run_dir.glob("node*/kafka.pid"))]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"kafka.Kafka" in f.read()
    except OSError:
        return False


def test_single_start_twice_and_stop_twice_are_harmless(tmp_path):
    env = {"KAFKA_RUN_DIR": str(tmp_path / "run"), "KAFKA_PORT": str(free_base(1))}
    first = run_kafka_sh("start", env=env)
    assert "Kafka Server started" in (tmp_path / "run/node1/server.log").read_text()
    [pid] = pids(tmp_path / "run")
    try:
        second = run_kafka_sh("start", env=env)
        assert "already running" in second.stdout, second.stdout
        assert pids(tmp_path / "run") == [pid], "a second start must not start another broker"
        assert run_kafka_sh("status", env=env).returncode == 0
    finally:
        run_kafka_sh("stop", env=env)
    assert not pid_alive(pid)
    again = run_kafka_sh("stop", env=env)
    assert "nothing running" in again.stdout
    assert run_kafka_sh("status", env=env, check=False).returncode == 1
    assert "up" in first.stdout


def test_busy_port_gives_a_clear_message(tmp_path):
    base = free_base(1)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base))
        blocker.listen()
        proc = run_kafka_sh("start", env={"KAFKA_RUN_DIR": str(tmp_path / "run"), "KAFKA_PORT": str(base)},
                            check=False)
    assert proc.returncode != 0
    assert f"port {base} on 127.0.0.1 is already in use" in proc.stderr, proc.stderr
    assert pids(tmp_path / "run") == []


async def _cluster_roundtrip(bootstrap: str, topic: str, kill) -> tuple[list[int], int]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 3, topic_configs={"min.insync.replicas": "2"})])
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            [meta] = await admin.describe_topics([topic])
            if meta["error_code"] == 0 and len(meta["partitions"]) == 3 and all(
                len(p["isr"]) == 3 for p in meta["partitions"]
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, f"topic never fully replicated: {meta}"
            await asyncio.sleep(0.3)
        replicas = sorted({len(p["replicas"]) for p in meta["partitions"]})
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=30000, retry_backoff_ms=200)
    await producer.start()
    try:
        for i in range(500):
            await producer.send(topic, key=str(i % 17).encode(), value=str(i).encode())
        await producer.flush()
        await asyncio.get_running_loop().run_in_executor(None, kill)
        # With one of three brokers gone, acks=all still succeeds (min ISR 2).
        for i in range(500, 1000):
            await (await producer.send(topic, key=str(i % 17).encode(), value=str(i).encode()))
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    seen: set[int] = set()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(seen) < 1000 and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                seen.update(int(r.value) for r in records)
    finally:
        await consumer.stop()
    return replicas, len(seen)


@pytest.mark.slow
def test_cluster_survives_kill_9_of_one_broker_and_stop_cleans_up(tmp_path):
    base = free_base(3)
    run_dir = tmp_path / "cluster"
    env = {"KAFKA_RUN_DIR": str(run_dir), "KAFKA_PORT": str(base)}
    run_kafka_sh("--mode", "cluster", "start", env=env)
    started = pids(run_dir)
    try:
        assert len(started) == 3 and all(pid_alive(p) for p in started)
        bootstrap = run_kafka_sh("--mode", "cluster", "bootstrap", env=env).stdout.strip()
        assert bootstrap == ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        killed = pids(run_dir)[1]

        def kill() -> None:
            run_kafka_sh("--mode", "cluster", "kill", "2", env=env)

        replicas, count = asyncio.run(_cluster_roundtrip(bootstrap, "rf3", kill))
        assert replicas == [3]
        assert not pid_alive(killed)
        assert count == 1000, f"expected all 1000 records after losing a broker, read {count}"
        # The killed node comes back and rejoins.
        run_kafka_sh("--mode", "cluster", "start-node", "2", env=env)
        assert len([p for p in pids(run_dir) if pid_alive(p)]) == 3
    finally:
        run_kafka_sh("--mode", "cluster", "stop", env=env)
    everything = started + pids(run_dir)
    wait_for(lambda: not any(pid_alive(p) for p in everything), 30, "all three brokers to exit")
    assert pids(run_dir) == [], "stop must remove every PID file"
    still = [p for i in range(3) for p in (base + i, base + 100 + i) if listening(p)]
    assert still == [], f"something still listens on {still} after stop"


def test_kafka_host_is_what_single_and_cluster_modes_advertise(tmp_path):
    env = {"KAFKA_RUN_DIR": str(tmp_path / "run"), "KAFKA_HOST": "10.77.0.2", "KAFKA_PORT": "9092"}
    assert run_kafka_sh("bootstrap", env=env).stdout.strip() == "10.77.0.2:9092"
    assert run_kafka_sh("--mode", "cluster", "bootstrap", env=env).stdout.strip() == \
        "10.77.0.2:9092,10.77.0.2:9093,10.77.0.2:9094"
    assert run_kafka_sh("bootstrap", env={"KAFKA_PORT": "9092"}).stdout.strip() == "127.0.0.1:9092"
    # Secure mode's certificate names 127.0.0.1 only: another address is refused, not half-served.
    proc = run_kafka_sh("--mode", "secure", "bootstrap", env=env, check=False)
    assert proc.returncode != 0 and "KAFKA_HOST works in single and cluster modes only" in proc.stderr, proc.stderr
