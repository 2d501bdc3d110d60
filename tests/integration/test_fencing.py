"""A writer that stalls past its session timeout is fenced: it can never get an append acknowledged.

Two workers over two partitions, each the writer of one. Clients send deposits
to both, without expected versions, so every command is decided against the
writer's own state. The first worker is stopped (SIGSTOP: alive, but frozen,
as in a long GC pause or a frozen VM) with commands in flight, stays stopped
past its session timeout, the second takes its partition over and serves its
aggregates' commands, and then the first resumes (SIGCONT) with the commands
its clients sent meanwhile.

Without a fence the resumed worker decides those commands on its stale state
and appends events at versions the new writer had already used: they are
skipped as duplicates, and commands answered 200 are lost. With the fence
(one transactional id per partition, taken over by the new writer) its appends
are aborted, and its clients get 503 or 504.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest
from support import fold_accounts, get, http, prometheus, read_topic, wait_for

from projector.core.partitioning import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
SESSION_TIMEOUT = 20.0  # the worker's broker_session_timeout (projector.runtime.app)


def _accounts() -> dict[int, list[str]]:
    """Four accounts in each partition."""
    out: dict[int, list[str]] = defaultdict(list)
    for i in itertools.count():
        aid = f"fence-{i}"
        p = partition_for(aid.encode(), PARTITIONS)
        if len(out[p]) < 4:
            out[p].append(aid)
        if all(len(out[q]) == 4 for q in range(PARTITIONS)):
            return dict(out)


def _events_partitions(url: str, topic: str) -> set[int]:
    """The events partitions this worker is assigned (its consumer lag gauges)."""
    # Labels in any order (prometheus-client writes them sorted: partition before topic).
    return {int(re.search(r'partition="(\d+)"', k).group(1)) for k in prometheus(url)
            if k.startswith("projector_consumer_lag{") and f'topic="{topic}"' in k}


class Clients:
    """Threads that send deposits to one worker each, and keep every answer."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.threads: list[threading.Thread] = []

    def start(self, url: str, accounts: list[str], n: int, tag: str) -> None:
        for i in range(n):
            t = threading.Thread(target=self._run, args=(url, accounts, f"{tag}{i}"), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, url: str, accounts: list[str], tag: str) -> None:
        while not self.stop.is_set():
            n = next(self.counter)
            aid = accounts[n % len(accounts)]
            cid = f"{tag}-{n}"
            command = {"command_id": cid, "aggregate_type": "account", "aggregate_id": aid,
                       "type": "Deposit", "data": {"amount": 1}}
            sent = time.monotonic()
            try:
                status, body = http("POST", f"{url}/commands?timeout_ms=30000", command, timeout=90)
            except OSError as exc:
                status, body = None, {"error": repr(exc)}
            with self.lock:
                self.results.append({"url": url, "cid": cid, "aid": aid, "status": status, "body": body,
                                     "sent": sent, "answered": time.monotonic()})

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)
            assert not t.is_alive(), "a client did not finish"


def test_a_writer_stopped_past_its_session_timeout_never_gets_an_append_acknowledged(worker_factory, names,
                                                                                    kafka_bootstrap):
    accounts = _accounts()
    w1 = worker_factory("w1", partitions=PARTITIONS)
    w2 = worker_factory("w2", partitions=PARTITIONS)
    w1.wait_ready()
    w2.wait_ready()
    everyone = [a for p in sorted(accounts) for a in accounts[p]]
    for aid in everyone:
        status, body = http("POST", f"{w2.url}/commands", {
            "command_id": f"open-{aid}", "aggregate_type": "account", "aggregate_id": aid, "type": "OpenAccount",
            "data": {"owner": "ann", "currency": "EUR"}}, timeout=60)
        assert status == 200, body
    mine = wait_for(lambda: _events_partitions(w1.url, names["events"]) or None, 60,
                    "w1 to be assigned a partition of the events topic")
    assert len(mine) == 1 and len(_events_partitions(w2.url, names["events"]) - mine) == 1, \
        "each worker should write one of the two partitions"
    [stale_partition] = mine

    clients = Clients()
    clients.start(w1.url, everyone, 12, "w1c")
    clients.start(w2.url, everyone, 4, "w2c")
    stopped = False
    try:
        wait_for(lambda: sum(r["status"] == 200 for r in clients.results) >= 40, 60, "the first commands")
        os.kill(w1.proc.pid, signal.SIGSTOP)
        stopped = True
        stopped_at = time.monotonic()

        def taken_over() -> bool:
            return sum(r["url"] == w2.url and r["status"] == 200 and r["sent"] > stopped_at + SESSION_TIMEOUT
                       and partition_for(r["aid"].encode(), PARTITIONS) == stale_partition
                       for r in list(clients.results)) >= 10

        wait_for(taken_over, 120, "w2 to decide commands of w1's partition after w1's session timed out")
        os.kill(w1.proc.pid, signal.SIGCONT)
        stopped = False
        resumed_at = time.monotonic()
        wait_for(lambda: sum(r["url"] == w1.url and r["sent"] > resumed_at for r in list(clients.results)) >= 20,
                 120, "commands sent to w1 after it resumed to be answered")
    finally:
        if stopped:
            os.kill(w1.proc.pid, signal.SIGCONT)
        clients.finish()
    assert w1.alive() and w2.alive(), (w1.log_tail(), w2.log_tail())
    w1.wait_ready()
    w2.wait_ready()

    # The events topic as a reader sees it (committed records only).
    events = []
    for record in read_topic(kafka_bootstrap, names["events"]):
        value = orjson.loads(record.value)
        events.extend(value if isinstance(value, list) else [value])
    by_command = Counter(e["metadata"]["command_id"] for e in events)
    versions: dict[str, list[int]] = defaultdict(list)
    for e in events:
        versions[e["aggregate_id"]].append(e["version"])
    # One writer at a time: each aggregate's versions are 1, 2, 3, ... with none appended twice.
    for aid, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), f"{aid}: versions {vs}"
    assert all(n == 1 for n in by_command.values()), [c for c, n in by_command.items() if n > 1]

    # Every command answered 200 is in the events topic once, at the version it was told.
    topic_version = {e["metadata"]["command_id"]: e["version"] for e in events}
    answers = Counter()
    for r in clients.results:
        answers[(r["url"] == w1.url, r["status"], r["body"].get("error"))] += 1
        if r["status"] == 200:
            assert topic_version.get(r["cid"]) == r["body"]["version"], (r, w1.log_tail())
        else:
            assert r["status"] in (503, 504), r
    # The stale writer's clients were answered, none with a lost 200.
    assert sum(n for (to_w1, _, _), n in answers.items() if to_w1) > 0, answers

    # And the read model is the fold of the topic.
    expected = fold_accounts(events)
    for aid in everyone:
        def row_is_folded() -> bool:
            status, body = get(f"{w2.url}/tables/accounts/{aid}")
            return status == 200 and {"version": body["version"], "value": body["value"]} == expected[aid]

        wait_for(row_is_folded, 60, f"{aid}'s row to equal the fold of the topic")
    fenced = prometheus(w1.url).get('projector_commands_total{outcome="append_failed"}', 0)
    print(f"\nanswers (to w1?, status, error): {dict(answers)}; w1 appends refused: {fenced}")


COUNTERS = '''
"""Counters whose decider can be held up: it writes a marker file, then sleeps (a test's long GC pause)."""
import pathlib
import time

NAME = "counters"
DESCRIPTION = "counters"
HANDLES = ("Added",)
AGGREGATE_TYPE = "counter"
COMMANDS = ("Add",)


def fold(state, event):
    return {"n": (state or {"n": 0})["n"] + 1}


def decide(state, command, settings):
    data = command["data"]
    mark = pathlib.Path(data["mark"]) if data.get("mark") else None
    if mark is not None and not mark.exists():  # only the first to decide it pauses
        mark.write_text("deciding")
        time.sleep(float(data.get("pause_s", 0)))
    return [{"type": "Added", "data": {}}]
'''


def test_a_writer_frozen_while_it_decides_gets_a_503_once_another_has_taken_over(worker_factory, names,
                                                                                kafka_bootstrap, tmp_path):
    """Deterministic: the writer freezes inside a decision, and appends it after the take-over."""
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "counters.py").write_text(COUNTERS)
    env = {"PROJECTOR_TABLES_DIR": str(tables)}
    w1 = worker_factory("w1", partitions=PARTITIONS, extra_env=env)
    w2 = worker_factory("w2", partitions=PARTITIONS, extra_env=env)
    w1.wait_ready()
    w2.wait_ready()
    mine = wait_for(lambda: _events_partitions(w1.url, names["events"]) or None, 60,
                    "w1 to be assigned a partition of the events topic")
    [stale_partition] = mine
    counter = next(f"c-{i}" for i in itertools.count() if partition_for(f"c-{i}".encode(), PARTITIONS) in mine)

    def add(url: str, cid: str, **data: Any) -> tuple[int, Any]:
        return http("POST", f"{url}/commands?timeout_ms=30000", {
            "command_id": cid, "aggregate_type": "counter", "aggregate_id": counter, "type": "Add",
            "data": data}, timeout=120)

    def first() -> Any:
        status, body = add(w2.url, "first")  # the same command id: sent again until it is decided
        assert status in (200, 503, 504), body
        return body if status == 200 else None

    assert wait_for(first, 60, "the first command to be decided")["version"] == 1
    mark = tmp_path / "deciding"
    stale: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: stale.update(zip(("status", "body"), add(
        w1.url, "stale", mark=str(mark), pause_s=5))), daemon=True)
    thread.start()
    stopped = False
    try:
        wait_for(mark.exists, 60, "w1 to be deciding the slow command")
        os.kill(w1.proc.pid, signal.SIGSTOP)
        stopped = True

        def taken_over() -> Any:
            status, body = add(w2.url, "new-writer")
            return body if status == 200 else None

        wait_for(taken_over, 120, "w2 to take w1's partition over and decide a command of it", interval=1)
        os.kill(w1.proc.pid, signal.SIGCONT)
        stopped = False
        thread.join(timeout=120)
        assert not thread.is_alive(), "w1 did not answer the stale command"
    finally:
        if stopped:
            os.kill(w1.proc.pid, signal.SIGCONT)
    # The stale writer decided version 2 on its old state, woke up and appended it: refused.
    wait_for(lambda: prometheus(w1.url).get('projector_commands_total{outcome="append_failed"}') == 1, 60,
             "w1's append of the stale decision to be refused")
    events = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, names["events"])
              if r.partition == stale_partition]
    decided = [(e["metadata"]["command_id"], e["version"]) for e in events]
    # One writer at a time: versions 1, 2, ... each command once. The new writer may have
    # decided the stale command too (w1 never committed its offset): then it is in the topic.
    assert [v for _, v in decided] == list(range(1, len(decided) + 1)), decided
    assert sorted(c for c, _ in decided) in (["first", "new-writer"], ["first", "new-writer", "stale"]), decided
    # Its client got a 503 (or the new writer's answer, true to the topic), never a lost 200.
    if stale["status"] == 200:
        assert ("stale", stale["body"]["version"]) in decided, (stale, decided)
    else:
        assert stale["status"] in (503, 504), (stale, w1.log_tail())


def test_the_next_writer_of_a_partition_fences_the_last_one_and_aborts_its_open_append(kafka_bootstrap, names):
    """WriterFence on the real broker: a take-over fences the old holder, and its append in flight is aborted."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from projector.core.engine import Send
    from projector.runtime.config import Settings
    from projector.runtime.fencing import Fenced, WriterFence

    settings = Settings.from_env({"PROJECTOR_BROKER": f"kafka://{kafka_bootstrap}",
                                  "PROJECTOR_APP_ID": names["app_id"]})
    topic = names["events"]

    async def scenario() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        old, new, later = (WriterFence(settings) for _ in range(3))
        try:
            await old.take(0)
            await old.append([Send(topic, 0, b"a", b"old-committed")])
            await new.take(0)  # the next owner: the old writer is fenced
            with pytest.raises(Fenced) as refused:
                await old.append([Send(topic, 0, b"a", b"old-after-take-over")])
            assert refused.value.by_another, refused.value
            assert old.fenced == 1 and not old.holds(0)
            await new.append([Send(topic, 0, b"a", b"new-committed")])
            # The writer is mid-append when it is taken over: its record is in the log, its commit not sent yet.
            producer = new.producers[0]
            await producer.begin_transaction()
            await (await producer.send(topic, key=b"a", value=b"new-in-flight", partition=0))
            await later.take(0)  # aborts the open transaction
            with pytest.raises(Exception):
                await producer.commit_transaction()
            await later.append([Send(topic, 0, b"a", b"later-committed")])
        finally:
            for fence in (old, new, later):
                await fence.drop_all()

    asyncio.run(scenario())
    committed = [r.value for r in read_topic(kafka_bootstrap, topic)]
    assert committed == [b"old-committed", b"new-committed", b"later-committed"], committed
