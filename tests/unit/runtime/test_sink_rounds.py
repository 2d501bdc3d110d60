"""projector.runtime.sink: the order in which a plan's records reach Kafka.

Index entries (projector.core.indexes) must be in Kafka before the rows they
point to are: a replay after a crash between the two folds the rows again and
writes the same entries, while a replay that finds a row up to date writes none.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from projector.core.engine import INDEX, Plan, Send
from projector.core.metrics import Metrics
from projector.runtime.sink import ChangelogSink
from projector.runtime.slicing import TimeSlice
from projector.runtime.stores import MemoryStore
from projector.runtime.waiters import RowWaiters


class FakeBatch:
    def __init__(self) -> None:
        self.records = []

    def append(self, **record):
        self.records.append(record)
        return object()

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """Records every send, and what had been acknowledged when it was sent."""

    def __init__(self) -> None:
        self.log: list[tuple[str, frozenset[str]]] = []
        self.acked: set[str] = set()

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    def _ack(self, topic: str):
        # The broker's answer comes on a later turn of the loop, as a real one does:
        # a future already done when sent would let asyncio.gather finish without
        # a turn of the loop (Python 3.12+), before anything ran on acknowledgement.
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def acknowledge() -> None:
            self.acked.add(topic)
            future.set_result(SimpleNamespace(offset=0))

        loop.call_soon(acknowledge)
        return future

    async def send_batch(self, batch, topic, partition):
        self.log.append((topic, frozenset(self.acked)))
        return self._ack(topic)

    async def send(self, topic, value, key, headers):
        self.log.append((topic, frozenset(self.acked)))
        return self._ack(topic)


def run(plan: Plan) -> tuple[FakeProducer, MemoryStore]:
    store = MemoryStore("app")
    producer = FakeProducer()

    async def append(_):
        raise AssertionError("no appends in these plans")

    sink = ChangelogSink(store=store, producer=lambda: producer, guard_tables={INDEX}, metrics=Metrics(),
                         rows=RowWaiters(), append=append)
    asyncio.run(sink.execute(plan, TimeSlice()))
    return producer, store


def sent_before(producer: FakeProducer, topic: str) -> frozenset[str]:
    """What was acknowledged when the first record of ``topic`` was sent."""
    return next(acked for t, acked in producer.log if t == topic)


def test_index_entries_are_acknowledged_before_their_rows_are_sent():
    plan = Plan(writes={
        ("accounts", 1): {b"a": b'{"version":1,"value":{}}'},
        ("_accounts_idx", 1): {b"owner\0ann\0a": b"1"},
        (INDEX, 1): {b"m": b"{}"},
    })
    producer, store = run(plan)
    assert "app-_accounts_idx-changelog" in sent_before(producer, "app-accounts-changelog")
    assert {"app-_accounts_idx-changelog", "app-accounts-changelog"} <= sent_before(producer, "app-_index-changelog")
    assert store.get("_accounts_idx", 1, b"owner\0ann\0a") == b"1"
    assert store.get("accounts", 1, b"a") is not None


def test_index_entries_go_with_the_messages():
    plan = Plan(writes={("accounts", 0): {b"a": b"{}"}, ("_accounts_idx", 0): {b"x": b"1"}},
                sends=[Send("dead", None, b"k", b"v")])
    producer, _ = run(plan)
    first_round = {t for t, acked in producer.log if not acked}
    assert first_round == {"dead", "app-_accounts_idx-changelog"}


def test_a_plan_without_index_entries_or_messages_starts_with_the_rows():
    producer, _ = run(Plan(writes={("accounts", 0): {b"a": b"{}"}, (INDEX, 0): {b"m": b"{}"}}))
    assert [t for t, _ in producer.log] == ["app-accounts-changelog", "app-_index-changelog"]
    assert sent_before(producer, "app-accounts-changelog") == frozenset()
