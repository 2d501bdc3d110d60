"""Several hosts, simulated: the broker and three workers, each in its own network namespace.

The test makes a bridge and, per host, a namespace with a veth pair into the
bridge and its own address on a random 10.77.X.0/24 (the host itself gets .1 on
the bridge, so the test reaches every namespace from outside). The broker runs
in its namespace (deploy/kafka/kafka.sh with KAFKA_HOST, so it listens on and
advertises its own address); each worker binds 0.0.0.0 on port 6066 (the same
port on every host) and advertises its own address. Through the bridge it shows
commands, forwarding to the owner, listings that hold every row once and
read-your-writes across workers; then it removes everything it made and checks
that no namespace, veth or bridge of it remains, also when the test fails.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from support import Worker, get, http, run_kafka_sh, wait_for

from projector.core.partitioning import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 6
WEB_PORT = 6066
KAFKA_PORT = 9092
WORKERS = ("w1", "w2", "w3")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _netns_usable() -> str | None:
    """None when this process may make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces, veth pairs and a bridge"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    probe = f"pjprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns is not available here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _free_subnet() -> int:
    """X of a 10.77.X.0/24 that no address or route of this host uses."""
    used = ip("-4", "-o", "addr").stdout + ip("-4", "route").stdout
    for _ in range(100):
        x = random.randrange(256)
        if not re.search(rf"\b10\.77\.{x}\.", used):
            return x
    raise AssertionError("no free 10.77.X.0/24 subnet")


@dataclass
class Net:
    """What the test made: the bridge, and per host a namespace, its veth and its address."""

    tag: str
    subnet: int
    bridge: str
    made_bridge: bool = False
    namespaces: dict[str, str] = field(default_factory=dict)  # host name -> namespace
    veths: list[str] = field(default_factory=list)  # host sides (deleting one deletes its peer)

    def addr(self, last: int) -> str:
        return f"10.77.{self.subnet}.{last}"

    def add_host(self, name: str, last: int) -> str:
        """A namespace with lo up and eth0 on the bridge at 10.77.X.last; returns the namespace."""
        ns, host_side, ns_side = f"pj{self.tag}-{name}", f"pj{self.tag}h{name}", f"pj{self.tag}p{name}"
        assert len(host_side) <= 15 and len(ns_side) <= 15
        ip("netns", "add", ns)
        self.namespaces[name] = ns
        ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
        self.veths.append(host_side)
        ip("link", "set", ns_side, "netns", ns)
        ip("link", "set", host_side, "master", self.bridge, "up")
        ip("-n", ns, "link", "set", ns_side, "name", "eth0")
        ip("-n", ns, "addr", "add", f"{self.addr(last)}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def leftovers(self) -> list[str]:
        """Every namespace or link of this run still there."""
        names = ip("netns", "list").stdout.split() + ip("-o", "link").stdout.split()
        return sorted({n.split("@")[0].rstrip(":") for n in names if f"pj{self.tag}" in n})

    def remove(self) -> None:
        for veth in self.veths:
            ip("link", "del", veth, check=False)
        for ns in self.namespaces.values():
            ip("netns", "del", ns, check=False)
        if self.made_bridge:
            ip("link", "del", self.bridge, check=False)


@dataclass
class Cluster:
    net: Net
    broker: str
    kafka_dir: Path
    workers: list[Worker]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    why_not = _netns_usable()
    if why_not:
        pytest.skip(why_not)
    tag = uuid.uuid4().hex[:4]
    while ip("link", "show", f"pj{tag}br", check=False).returncode == 0:
        tag = uuid.uuid4().hex[:4]
    net = Net(tag=tag, subnet=_free_subnet(), bridge=f"pj{tag}br")
    kafka_env = {"KAFKA_RUN_DIR": str(tmp_path / "kafka"), "KAFKA_PORT": str(KAFKA_PORT),
                 "KAFKA_STOP_TIMEOUT": "20", "KAFKA_HEAP": "-Xms256m -Xmx512m"}
    workers: list[Worker] = []
    try:
        ip("link", "add", net.bridge, "type", "bridge")
        net.made_bridge = True
        ip("addr", "add", f"{net.addr(1)}/24", "dev", net.bridge)
        ip("link", "set", net.bridge, "up")
        broker_ns = net.add_host("kb", 2)
        for i, name in enumerate(WORKERS):
            net.add_host(name, 11 + i)

        broker = f"{net.addr(2)}:{KAFKA_PORT}"
        kafka_env["KAFKA_HOST"] = net.addr(2)
        started = run_kafka_sh("start", env=kafka_env, prefix=["ip", "netns", "exec", broker_ns])
        assert broker in started.stdout, started.stdout

        app = f"t{uuid.uuid4().hex[:10]}"
        for i, name in enumerate(WORKERS):
            data_dir = tmp_path / name / "data"
            data_dir.mkdir(parents=True)
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PROJECTOR_API_TOKEN", "PROJECTOR_ADMIN_TOKEN", "PROJECTOR_PEER_TOKEN")}
            env.update({
                "PROJECTOR_BROKER": f"kafka://{broker}",
                "PROJECTOR_APP_ID": app,
                "PROJECTOR_EVENTS_TOPIC": f"{app}-events",
                "PROJECTOR_CONTROL_TOPIC": f"{app}-control",
                "PROJECTOR_PARTITIONS": str(PARTITIONS),
                "PROJECTOR_DATA_DIR": str(data_dir),
                "PROJECTOR_WEB_BIND": "0.0.0.0",
                "PROJECTOR_WEB_HOST": net.addr(11 + i),
                "PROJECTOR_WEB_PORT": str(WEB_PORT),
                # One host name in every namespace: give each its own identity.
                "PROJECTOR_INSTANCE_ID": f"{app}-{name}",
            })
            workers.append(Worker(name, env, data_dir, WEB_PORT, tmp_path / f"{name}.log", host=net.addr(11 + i),
                                  prefix=["ip", "netns", "exec", net.namespaces[name]]).start())
        yield Cluster(net, broker, tmp_path / "kafka", workers)
    finally:
        try:
            for w in workers:  # SIGTERM all first: each clean stop takes seconds
                w.terminate()
            for w in workers:
                w.stop(timeout=30)
            run_kafka_sh("stop", env=kafka_env, check=False)
            pid_file = tmp_path / "kafka" / "node1" / "kafka.pid"
            if pid_file.exists():  # stop failed: the broker's PID, by hand
                pid = int(pid_file.read_text())
                if Path(f"/proc/{pid}").exists() and b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, 9)
        finally:
            net.remove()
            # A namespace goes when its last process has exited: wait for that, with a deadline.
            wait_for(lambda: not net.leftovers(), 30, f"the namespaces and links of pj{tag} to be gone")
            assert not net.leftovers()


def command(url: str, body: dict[str, Any]) -> tuple[int, dict]:
    """POST /commands; a 503 or 504 (writer not ready yet) is sent again with the same command id."""

    def answer() -> tuple[int, dict] | None:
        status, reply = http("POST", f"{url}/commands?timeout_ms=8000", body=body)
        return None if status in (503, 504) else (status, reply)

    return wait_for(answer, 60, f"a final answer to {body['command_id']} from {url}", interval=0.5)


def served_by(url: str) -> str | None:
    """Which worker answered a lookup through ``url``: the owner's advertised URL, None when ``url`` owns it."""
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200
        return r.headers.get("X-Projector-Served-By")


def walk(url: str, limit: int) -> list[dict]:
    rows, cursor = [], None
    while True:
        status, body = get(f"{url}/tables/accounts?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        rows.extend(body["rows"])
        cursor = body["next_cursor"]
        if cursor is None:
            return rows
        assert len(rows) < 10_000


def test_broker_and_three_workers_on_three_hosts(cluster: Cluster):
    net, workers = cluster.net, cluster.workers
    for w in workers:
        w.wait_ready(timeout=90)
    # Each worker and the broker run inside their own namespace.
    for w in workers:
        assert str(w.proc.pid) in ip("netns", "pids", net.namespaces[w.name]).stdout.split(), w.name
    kafka_pid = (cluster.kafka_dir / "node1" / "kafka.pid").read_text().strip()
    assert kafka_pid in ip("netns", "pids", net.namespaces["kb"]).stdout.split()
    # The workers listen on every address of their host (the host's own loopback is another host's).
    probe = "import urllib.request,sys; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=10).status != 200)"
    subprocess.run(["ip", "netns", "exec", net.namespaces["w1"], sys.executable, "-c", probe,
                    f"http://127.0.0.1:{WEB_PORT}/healthz"], check=True, timeout=30)

    # Accounts on every partition, two each, opened through the workers in turn.
    keys: list[str] = []
    per_partition = {p: 0 for p in range(PARTITIONS)}
    n = 0
    while min(per_partition.values()) < 2:
        key, n = f"acct-{net.tag}-{n}", n + 1
        p = partition_for(key.encode(), PARTITIONS)
        if per_partition[p] < 2:
            per_partition[p] += 1
            keys.append(key)

    def open_and_deposit(i: int, key: str) -> None:
        status, body = command(workers[i % 3].url, {
            "command_id": f"open-{key}", "aggregate_type": "account", "aggregate_id": key,
            "type": "OpenAccount", "data": {"owner": f"o{i % 4}", "currency": "EUR"}})
        assert (status, body["version"]) == (200, 1), body
        status, body = command(workers[(i + 1) % 3].url, {
            "command_id": f"dep-{key}", "aggregate_type": "account", "aggregate_id": key,
            "type": "Deposit", "data": {"amount": 100 + i}})
        assert (status, body["version"]) == (200, 2), body

    with ThreadPoolExecutor(len(keys)) as pool:
        for done in [pool.submit(open_and_deposit, i, key) for i, key in enumerate(keys)]:
            done.result()
    balances = {key: 100 + i for i, key in enumerate(keys)}

    # Read-your-writes: a command through one worker, then a read through each other one waits for its version.
    for i, writer in enumerate(workers):
        for j, reader in enumerate(workers):
            if i == j:
                continue
            key = keys[3 * i + j]
            status, body = command(writer.url, {"command_id": f"ryw-{i}-{j}", "aggregate_type": "account",
                                                "aggregate_id": key, "type": "Deposit", "data": {"amount": 7}})
            assert status == 200, body
            balances[key] += 7
            status, row = get(f"{reader.url}/tables/accounts/{key}?min_version={body['version']}&timeout_ms=20000")
            assert status == 200, row
            assert row["version"] >= body["version"] and row["value"]["balance"] == balances[key], (key, row)

    # Commands through any worker: a rejection and a version conflict answer the same from every host.
    for w in workers:
        status, body = command(w.url, {"command_id": f"big-{w.name}", "aggregate_type": "account",
                                       "aggregate_id": keys[0], "type": "Withdraw", "data": {"amount": 10 ** 9}})
        assert (status, body["error"]) == (422, "rejected"), body
        status, body = command(w.url, {"command_id": f"stale-{w.name}", "aggregate_type": "account",
                                       "aggregate_id": keys[1], "expected_version": 1, "type": "Deposit",
                                       "data": {"amount": 1}})
        assert (status, body["error"]) == (409, "version_conflict"), body
    # The same command id again gives the first answer and appends nothing.
    again = command(workers[2].url, {"command_id": f"dep-{keys[0]}", "aggregate_type": "account",
                                     "aggregate_id": keys[0], "type": "Deposit", "data": {"amount": 100}})
    assert again[0] == 200 and again[1]["version"] == 2, again

    # Every worker has every row at its final version (lookups wait with min_version).
    final = {}
    for key in keys:
        status, body = get(f"{workers[0].url}/aggregates/{key}/events?from_version=1")
        assert status == 200, body
        final[key] = body["events"][-1]["version"]
    for w in workers:
        for key in keys:
            status, row = get(f"{w.url}/tables/accounts/{key}?min_version={final[key]}&timeout_ms=20000")
            assert status == 200 and row["value"]["balance"] == balances[key], (w.name, key, row)

    # Forwarding: each key is owned by exactly one worker; the other two forward to it, at its own address.
    owners: dict[str, str] = {}
    for key in keys:
        answers = {w.url: served_by(f"{w.url}/tables/accounts/{key}") for w in workers}
        local = [url for url, by in answers.items() if by is None]
        assert len(local) == 1, (key, answers)
        owners[key] = local[0]
        assert all(by == local[0] for url, by in answers.items() if url != local[0]), (key, answers)
    assert set(owners.values()) == {w.url for w in workers}, "every worker owns some partitions"

    # Listings through every worker: every row exactly once, in key order, at its final state.
    for w in workers:
        rows = walk(w.url, limit=5)
        listed = [r["key"] for r in rows]
        assert listed == sorted(keys, key=str.encode), w.name
        assert {r["key"]: r["value"]["balance"] for r in rows} == balances, w.name

    # A re-keyed table (owners, through a repartition topic) sums up every account, through every worker.
    def owners_total(url: str) -> int:
        status, body = get(f"{url}/tables/owners?limit=100")
        assert status == 200, body
        return sum(r["value"]["balance"] for r in body["rows"])

    for w in workers:
        wait_for(lambda: owners_total(w.url) == sum(balances.values()), 30, f"owners on {w.name} to add up")
