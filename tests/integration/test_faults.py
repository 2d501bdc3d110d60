"""Scale-out and faults under load: workers come and go, one is killed, one loses its state.

300,000 events over 5,000 accounts go to an 8-partition topic in six chunks.
Between chunks, while the workers still fold the last one, the test changes
the group: 1 -> 2 -> 4 -> 3 workers, then kills one with ``kill -9`` and
restarts it from its old data dir, restarts another with its data dir
deleted, and goes down to 1 worker. Three poison records are mixed in. In
the end every read model must equal the oracle computed here, and the
dead-letter topic must hold the poison records and nothing else.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import orjson
import pytest
from support import fold_accounts, free_base, get, group_by, produce, prometheus, read_topic, run_kafka_sh, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

ACCOUNTS = 5000
EVENTS = 300_000
PARTITIONS = 8
POISON = [(f"poison-{i}".encode(), b"{this is not json") for i in range(3)]


def _rows(url: str, table: str) -> dict[str, Any]:
    """A whole table through one worker's listing (every partition, every worker)."""
    out: dict[str, Any] = {}
    cursor = None
    while True:
        query = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, body = get(f"{url}/tables/{table}?{query}", timeout=60)
        assert status == 200, body
        for row in body["rows"]:
            out[row["key"]] = {"version": row["version"], "value": row["value"]}
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def _expected(histories: list[dict]) -> dict[str, dict]:
    accounts = fold_accounts(histories)
    return {"accounts": {k: r["value"] for k, r in accounts.items()},
            "owners": group_by(accounts, "owner"), "currencies": group_by(accounts, "currency")}


class _Difference:
    """What differs from the oracle: false when something does, and says what (in a wait_for's failure)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def __bool__(self) -> bool:
        return not self.problems

    def __repr__(self) -> str:
        return "; ".join(self.problems) or "equal to the oracle"


def _diff(table: str, got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    if not keys:
        return []
    shown = ", ".join(f"{k}: got {got.get(k)!r}, want {want.get(k)!r}" for k in keys[:3])
    return [f"{table}: {len(keys)} of {len(want)} rows differ ({shown})"]


def _equals_oracle(url: str, expected: dict[str, dict], versions: dict[str, int]) -> _Difference:
    got = _rows(url, "accounts")
    problems = _diff("accounts (versions)", {k: r["version"] for k, r in got.items()}, versions)
    if problems:
        return _Difference(problems)
    for table, rows in expected.items():
        problems += _diff(table, {k: r["value"] for k, r in _rows(url, table).items()}, rows)
    return _Difference(problems)


def _ready(workers: list) -> None:
    for w in workers:
        w.wait_ready(timeout=300)


@pytest.mark.parametrize("starting", [1, 2])
def test_workers_join_leave_crash_and_lose_state_under_load(worker_factory, names, kafka_bootstrap, starting):
    histories = list(generate_histories(ACCOUNTS, EVENTS, seed=7))
    records = [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories]
    size = len(records) // 6 + 1
    chunks = [records[i:i + size] for i in range(0, len(records), size)]
    chunks[2] = chunks[2][:100] + [POISON[0]] + chunks[2][100:]
    chunks[4] = chunks[4][:100] + POISON[1:] + chunks[4][100:]
    w = {n: worker_factory(f"w{n}", partitions=PARTITIONS, start=False) for n in (1, 2, 3, 4)}
    for n in range(1, starting + 1):
        w[n].start()
    _ready([w[n] for n in range(1, starting + 1)])
    steps: list[tuple[str, float]] = []

    def step(what: str, action) -> None:
        began = time.monotonic()
        action()
        steps.append((what, round(time.monotonic() - began, 1)))

    produce(kafka_bootstrap, names["events"], chunks[0])
    if starting == 1:
        step("1 -> 2 workers", lambda: (w[2].start(), _ready([w[1], w[2]])))
    produce(kafka_bootstrap, names["events"], chunks[1])
    step("2 -> 4 workers", lambda: (w[3].start(), w[4].start(), _ready([w[1], w[2], w[3], w[4]])))
    produce(kafka_bootstrap, names["events"], chunks[2])
    step("4 -> 3 workers (SIGTERM)", lambda: (w[4].stop(), _ready([w[1], w[2], w[3]])))
    produce(kafka_bootstrap, names["events"], chunks[3])
    step("kill -9 and restart from the old data dir", lambda: (w[2].kill9(), w[2].start(), _ready([w[2]])))
    produce(kafka_bootstrap, names["events"], chunks[4])

    restored: list[float] = []

    def wipe() -> None:
        w[3].stop()
        shutil.rmtree(w[3].data_dir)
        w[3].data_dir.mkdir(parents=True)
        w[3].start()
        _ready([w[3]])
        # It rebuilt its tables from their changelogs, and counted what it restored.
        restored.append(prometheus(w[3].url)["projector_recovery_restored_total"])
        assert restored[-1] > 0

    step("restart with the data dir deleted", wipe)
    produce(kafka_bootstrap, names["events"], chunks[5])
    step("3 -> 1 worker", lambda: (w[2].stop(), w[3].stop(), _ready([w[1]])))

    expected = _expected(histories)
    versions = {k: r["version"] for k, r in fold_accounts(histories).items()}
    wait_for(lambda: _equals_oracle(w[1].url, expected, versions), 600, "every read model to equal the oracle",
             interval=3)

    dead = read_topic(kafka_bootstrap, f"{names['events']}.deadletter")
    # A poison record may be dead-lettered again after a crash (at-least-once), never anything else.
    assert {r.key for r in dead} == {k for k, _ in POISON}, [(r.key, r.value[:60]) for r in dead][:10]
    reasons = {dict(r.headers)["projector.reason"] for r in dead}
    assert reasons == {b"invalid_json"}
    print(f"\nfault steps (starting with {starting}): {steps}; restored after the wipe: {restored}")


async def _topic_replication(bootstrap: str, names: list[str]) -> dict[str, tuple[int, str]]:
    """(replication factor, min.insync.replicas) of each topic."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        out = {}
        for topic in await admin.describe_topics(names):
            out[topic["topic"]] = [len(topic["partitions"][0]["replicas"])]
        for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names]):
            for resource in response.resources:
                configs = {c[0]: c[1] for c in resource[4]}
                out[resource[3]].append(configs.get("min.insync.replicas"))
        return {k: tuple(v) for k, v in out.items()}
    finally:
        await admin.close()


def test_three_broker_cluster_with_a_broker_killed_and_restarted(worker_factory, names, tmp_path):
    import asyncio

    env = {"KAFKA_RUN_DIR": str(tmp_path / "cluster"), "KAFKA_PORT": str(free_base(3))}
    run_kafka_sh("--mode", "cluster", "start", env=env)
    try:
        bootstrap = run_kafka_sh("--mode", "cluster", "bootstrap", env=env).stdout.strip()
        histories = list(generate_histories(ACCOUNTS, EVENTS, seed=8))
        records = [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories]
        size = len(records) // 6 + 1
        chunks = [records[i:i + size] for i in range(0, len(records), size)]
        extra = {"PROJECTOR_BROKER": bootstrap}
        workers = [worker_factory(f"c{n}", partitions=PARTITIONS, extra_env=extra) for n in (1, 2)]
        _ready(workers)
        produce(bootstrap, names["events"], chunks[0])
        produce(bootstrap, names["events"], chunks[1])
        run_kafka_sh("--mode", "cluster", "kill", "2", env=env)  # kill -9, while the workers fold
        produce(bootstrap, names["events"], chunks[2])
        produce(bootstrap, names["events"], chunks[3])
        run_kafka_sh("--mode", "cluster", "start-node", "2", env=env)
        produce(bootstrap, names["events"], chunks[4])
        produce(bootstrap, names["events"], chunks[5])
        expected = _expected(histories)
        versions = {k: r["version"] for k, r in fold_accounts(histories).items()}
        for worker in workers:
            wait_for(lambda: _equals_oracle(worker.url, expected, versions), 600,
                     f"{worker.name}: every read model to equal the oracle", interval=3)
        # Nothing was lost, nothing applied twice (the oracle above), and nothing dead-lettered.
        assert read_topic(bootstrap, f"{names['events']}.deadletter") == []
        # Internal topics and changelogs got the cluster's durability settings.
        changelog = f"{names['app_id']}-accounts-changelog"
        replication = asyncio.run(_topic_replication(
            bootstrap, [names["events"], f"{names['app_id']}-commands", changelog]))
        assert set(replication.values()) == {(3, "2")}, replication
    finally:
        for worker in list(locals().get("workers", [])):
            worker.stop()
        run_kafka_sh("--mode", "cluster", "stop", env=env, check=False)


def test_a_worker_beyond_the_partition_count_is_a_standby_and_takes_over(worker_factory, names, kafka_bootstrap):
    histories = list(generate_histories(200, 4000, seed=9))
    workers = [worker_factory(f"s{n}", partitions=2) for n in (1, 2, 3)]
    _ready(workers)
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories])
    versions = {k: r["version"] for k, r in fold_accounts(histories).items()}
    expected = _expected(histories)
    wait_for(lambda: _equals_oracle(workers[0].url, expected, versions), 180, "the read models", interval=2)

    def roles() -> dict[str, str]:
        return {w.name: get(f"{w.url}/status")[1]["role"] for w in workers if w.alive()}

    wait_for(lambda: sorted(roles().values()) == ["active", "active", "standby"], 60, "two actives and a standby")
    standby = next(w for w in workers if roles()[w.name] == "standby")
    status = get(f"{standby.url}/status")[1]
    assert status["partitions"] == [] and status["standby_partitions"], status
    # An active worker leaves: the standby takes over its partition and answers from its own state.
    leaving = next(w for w in workers if w is not standby)
    leaving.stop()
    wait_for(lambda: get(f"{standby.url}/status")[1]["role"] == "active", 120, "the standby to become active")
    standby.wait_ready()
    assert _equals_oracle(standby.url, expected, versions)


def test_local_state_past_a_replaced_changelog_is_rebuilt_not_trusted(worker_factory, names, kafka_bootstrap):
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    histories = list(generate_histories(50, 500, seed=10))
    w = worker_factory("r1", partitions=2)
    w.wait_ready()
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories])
    versions = {k: r["version"] for k, r in fold_accounts(histories).items()}
    wait_for(lambda: {k: r["version"] for k, r in _rows(w.url, "accounts").items()} == versions, 120, "the fold")
    w.stop()
    changelog = f"{names['app_id']}-accounts-changelog"

    async def replace_changelog() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([changelog])
            # Wait until it is gone: the worker creates it again, empty, when it starts.
            for _ in range(100):
                if changelog not in await admin.list_topics():
                    return
                await asyncio.sleep(0.2)
            raise AssertionError(f"{changelog} was not deleted")
        finally:
            await admin.close()

    asyncio.run(replace_changelog())
    w.start()
    w.wait_ready(timeout=120)  # it must not wait forever for offsets the new changelog never had
    log = w.log_path.read_text(errors="replace")
    assert "Rebuilding it from the changelog's first record" in log, w.log_tail(60)
    assert "past the changelog's end" in log
    # The stale local rows were dropped, not trusted. With its changelog gone, accounts is a read
    # model with no state in an app that has folded events: it is built again from the events
    # topic's history (CONTRACT §6), and ends equal to the fold; the other tables are untouched.
    assert get(f"{w.url}/aggregates/{histories[0]['aggregate_id']}/events")[0] == 200
    wait_for(lambda: {k: r["version"] for k, r in _rows(w.url, "accounts").items()} == versions, 120,
             "accounts rebuilt from the events topic's history")
    assert "building version 1 from the events topic's history" in w.log_path.read_text(errors="replace")


def test_a_changelog_that_is_not_compacted_stops_the_worker_with_the_fix(worker_factory, names, kafka_bootstrap):
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    changelog = f"{names['app_id']}-accounts-changelog"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(changelog, 2, 1, topic_configs={"cleanup.policy": "delete"})])
        finally:
            await admin.close()

    asyncio.run(create())
    w = worker_factory("k1", partitions=2)
    assert w.proc.wait(timeout=120) != 0
    log = w.log_path.read_text(errors="replace")
    assert f"topic {changelog!r} must be compacted" in log and "(cleanup.policy=delete)" in log, log[-2000:]
    assert f"--alter --entity-type topics --entity-name {changelog} --add-config cleanup.policy=compact" in log


def test_sigterm_commits_and_leaves_the_group(worker_factory, names, kafka_bootstrap):
    """A worker stopped with SIGTERM commits what it folded and leaves the group at once.

    Events keep coming while it stops, so the other worker is folding and
    acking when the rebalance revokes its partitions too (the eager
    protocol), with up to a commit interval of acked offsets not yet
    committed. Nothing may be read twice across the hand-over: neither the
    stopped worker's records nor the other worker's own, so the other worker
    skips no event as a duplicate. The stopped worker's log shows that it
    left the group (instead of its partitions waiting for its session to
    time out).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    histories = list(generate_histories(300, 6000, seed=12))
    late = list(generate_histories(200, 4000, seed=13))
    for e in late:
        e["aggregate_id"] = "late-" + e["aggregate_id"]
    w1, w2 = worker_factory("t1", partitions=4), worker_factory("t2", partitions=4)
    _ready([w1, w2])
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories])
    versions = {k: r["version"] for k, r in fold_accounts(histories).items()}
    wait_for(lambda: {k: r["version"] for k, r in _rows(w1.url, "accounts").items()} == versions, 180, "the fold")
    assert get(f"{w1.url}/status")[1]["partitions"] and get(f"{w2.url}/status")[1]["partitions"]

    def duplicates(w) -> float:
        return prometheus(w.url)["projector_duplicates_total"]

    assert duplicates(w1) == duplicates(w2) == 0
    records = [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in late]
    chunks = [records[i:i + 100] for i in range(0, len(records), 100)]
    sent = threading.Event()

    def keep_producing() -> None:
        try:
            for n, chunk in enumerate(chunks):
                produce(kafka_bootstrap, names["events"], chunk)
                if n == len(chunks) // 4:
                    sent.set()  # each chunk is a producer of its own: they span a few seconds
        finally:
            sent.set()

    with ThreadPoolExecutor(1) as pool:
        producing = pool.submit(keep_producing)
        assert sent.wait(60), "the producer did not start"
        w1.stop()  # while w2 folds and acks the events still coming
        producing.result(120)  # what the producer met, raised here
    assert w1.proc.returncode == 0, w1.log_tail()
    assert "LeaveGroup request succeeded" in w1.log_path.read_text(errors="replace"), w1.log_tail(60)
    wait_for(lambda: get(f"{w2.url}/status")[1]["partitions"] == [0, 1, 2, 3], 60, "w2 to own every partition")
    histories += late
    versions = {k: r["version"] for k, r in fold_accounts(histories).items()}
    expected = _expected(histories)
    wait_for(lambda: _equals_oracle(w2.url, expected, versions), 180,
             "w2 to fold the events that came during the hand-over, to the oracle", interval=1)
    # Every offset either worker folded was committed: w2 read none of them again.
    assert duplicates(w2) == 0, "\n".join(
        line for line in w2.log_path.read_text(errors="replace").splitlines() if "revoked" in line)
