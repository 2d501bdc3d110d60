"""Helpers shared by the tests: deadlines, HTTP, worker processes, a plain producer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import orjson

from projector.bench.common import free_port, free_ports  # noqa: F401 (free_port: for the tests)

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns a truthy value, or fail after ``timeout`` seconds.

    The failure names what was awaited and the last value (or error) seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = condition()
            if last:
                return last
        except Exception as exc:  # keep polling; report the last error on timeout
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def free_base(nodes: int) -> int:
    """A base port for deploy/kafka/kafka.sh: base..base+nodes-1 and base+100.. free (client and controller ports)."""
    return free_ports([*range(nodes), *(100 + i for i in range(nodes))])


def http(method: str, url: str, body: Any = None, token: Optional[str] = None, timeout: float = 20) -> tuple[int, Any]:
    """One HTTP request; returns (status, decoded JSON body)."""
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    return status, (orjson.loads(raw) if raw else None)


def get(url: str, **kw: Any) -> tuple[int, Any]:
    return http("GET", url, **kw)


@dataclass
class Worker:
    """A real ``projector worker`` subprocess."""

    name: str
    env: dict[str, str]
    data_dir: Path
    port: int
    log_path: Path
    proc: Optional[subprocess.Popen] = None
    _log: Any = field(default=None, repr=False)
    #: The PID already sent SIGTERM (a second one would hurry Faust's clean stop).
    _terminated: Optional[int] = field(default=None, repr=False)
    #: Where the test reaches it (its PROJECTOR_WEB_HOST when not on loopback).
    host: str = "127.0.0.1"
    #: Run it under a command, e.g. ``["ip", "netns", "exec", NS]`` (which execs: the PID stays the worker's).
    prefix: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "Worker":
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "projector", "worker"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(self.data_dir.parent),
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return get(f"{self.url}/readyz", timeout=5, token=self.env.get("PROJECTOR_API_TOKEN"))[0] == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout, f"{self.name} to answer 200 on /readyz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} log ---\n{self.log_tail()}") from None

    def terminate(self) -> None:
        """SIGTERM, without waiting (:meth:`stop` waits)."""
        if self.alive() and self.proc.pid != self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = self.proc.pid

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (once) and wait; SIGKILL if it does not exit in time."""
        if self.alive():
            self.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def kill9(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=10)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Produce (key, value) records with a plain aiokafka producer, in order per key."""
    asyncio.run(_produce(bootstrap, topic, records))


def run_kafka_sh(*args: str, env: Optional[dict[str, str]] = None, check: bool = True, timeout: float = 300,
                 prefix: Optional[list[str]] = None) -> subprocess.CompletedProcess:
    """deploy/kafka/kafka.sh ARGS, under ``prefix`` (e.g. ``["ip", "netns", "exec", NS]``) when given."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [*(prefix or []), "bash", str(KAFKA_SH), *args], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kafka.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def prometheus(url: str) -> dict[str, float]:
    """GET /metrics and parse it into {'name{labels}': value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=20) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def _read_topic(bootstrap: str, topic: str, timeout: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # earliest: whatever offset reset the assignment starts, it cannot move the reader past
    # records it has not read (a reset to "latest" racing seek_to_beginning).
    # read_committed: as projector reads it (an aborted append of a fenced writer is not an event).
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    try:
        # Metadata for a topic can be missing for a moment (a fresh client, a broker
        # that just restarted): ask again rather than report an empty topic.
        deadline = time.monotonic() + min(timeout, 30)
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} has no partitions in the broker's metadata (does it exist?)")
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout}s")
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[Any]:
    """Every record of ``topic`` up to its current end (aiokafka ConsumerRecords)."""
    return asyncio.run(_read_topic(bootstrap, topic, timeout))


def fold_accounts(events: list[dict]) -> dict[str, dict]:
    """The oracle for ``accounts``, folded here without projector's code."""
    rows: dict[str, dict] = {}
    for e in events:
        aid, data = e["aggregate_id"], e["data"]
        if e["type"] == "AccountOpened":
            value = {"owner": data["owner"], "currency": data["currency"], "balance": 0,
                     "status": "open", "deposits": 0, "withdrawals": 0}
        else:
            value = dict(rows[aid]["value"])
            if e["type"] == "MoneyDeposited":
                value["balance"] += data["amount"]
                value["deposits"] += 1
            elif e["type"] == "MoneyWithdrawn":
                value["balance"] -= data["amount"]
                value["withdrawals"] += 1
            else:
                value["status"] = "closed"
        rows[aid] = {"version": e["version"], "value": value}
    return rows


def group_by(accounts: dict[str, dict], field_name: str) -> dict[str, dict]:
    """The oracle for ``owners`` or ``currencies``, grouped here from accounts rows."""
    out: dict[str, dict] = {}
    for row in accounts.values():
        v = row["value"]
        g = out.setdefault(v[field_name], {"accounts": 0, "open_accounts": 0, "balance": 0})
        g["accounts"] += 1
        g["open_accounts"] += v["status"] == "open"
        g["balance"] += v["balance"]
    return out
