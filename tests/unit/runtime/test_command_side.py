"""The command side's runtime parts: the writer's gate (fence, end, position), waiting commands, waiters.

Kafka itself is exercised in tests/integration/test_fencing.py; here the gate
gets a consumer and a fence that say what a test needs.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from projector.runtime.command_side import CommandQueue, CommandRoundTrip, WriterGate
from projector.runtime.fencing import Fenced

TOPIC = "events"


class Consumer:
    """The two answers the gate asks of the consumer: the partition's end, and the position reached."""

    def __init__(self, end: int, position: int) -> None:
        self.end = end
        self.position_ = position
        self.ends_read = 0

    async def highwaters(self, tp: Any) -> dict:
        self.ends_read += 1
        return {tp: self.end}

    async def position(self, tp: Any) -> Optional[int]:
        return self.position_


class Fence:
    def __init__(self) -> None:
        self.taken: list[int] = []
        self.refuse: Optional[str] = None

    async def take(self, partition: int) -> None:
        if self.refuse:
            raise Fenced(partition, self.refuse, by_another=False)
        self.taken.append(partition)


def check(gate: WriterGate, partition: int, consumer: Consumer) -> bool:
    asyncio.run(gate.check(partition, consumer))
    return gate.is_open(partition)


def test_a_partition_ending_in_a_commit_marker_opens_once_the_position_passes_it():
    # Records at offsets 0..9 and a transaction's commit marker at 10: the end is 11, and the
    # last record delivered is 9. The consumer's position (11) has moved past the marker.
    fence = Fence()
    gate = WriterGate(TOPIC, fence)
    assert check(gate, 3, Consumer(end=11, position=11))
    assert fence.taken == [3]


def test_the_gate_stays_shut_until_the_position_reaches_the_end():
    gate = WriterGate(TOPIC, Fence())
    consumer = Consumer(end=11, position=7)
    assert not check(gate, 0, consumer)
    consumer.position_ = 10
    assert not check(gate, 0, consumer)
    consumer.position_ = 11
    assert check(gate, 0, consumer)
    assert consumer.ends_read == 1  # the end is read once, after the fence


def test_the_gate_fences_before_it_reads_the_end_and_stays_shut_while_the_fence_fails():
    fence = Fence()
    fence.refuse = "Kafka did not answer"
    gate = WriterGate(TOPIC, fence)
    consumer = Consumer(end=5, position=5)
    assert not check(gate, 1, consumer)
    assert consumer.ends_read == 0  # no end read before earlier writers are fenced
    fence.refuse = None
    assert check(gate, 1, consumer)


def test_a_rebalance_fences_again():
    fence = Fence()
    gate = WriterGate(TOPIC, fence)
    consumer = Consumer(end=0, position=0)
    assert check(gate, 2, consumer)
    gate.reset()
    assert not gate.is_open(2)
    assert check(gate, 2, consumer)
    assert fence.taken == [2, 2]


def test_a_fenced_append_shuts_the_partition_until_the_next_rebalance():
    fence = Fence()
    gate = WriterGate(TOPIC, fence)
    consumer = Consumer(end=0, position=0)
    assert check(gate, 4, consumer)
    gate.append_failed(4, by_another=True)
    assert gate.moved(4)
    assert not check(gate, 4, consumer)  # no take-back: the other worker writes it now
    assert fence.taken == [4]
    gate.reset()
    assert not gate.moved(4) and check(gate, 4, consumer)


def test_a_writer_still_holding_its_partition_after_a_fence_takes_it_again_after_a_while(monkeypatch):
    # Kafka also fences a transaction it timed out: with no rebalance coming, the writer takes over again.
    from projector.runtime import command_side

    fence = Fence()
    gate = WriterGate(TOPIC, fence)
    consumer = Consumer(end=0, position=0)
    assert check(gate, 4, consumer)
    gate.append_failed(4, by_another=True)
    assert not check(gate, 4, consumer)
    clock = command_side.time.monotonic() + command_side.LOST_FOR + 1
    monkeypatch.setattr(command_side.time, "monotonic", lambda: clock)
    assert not gate.moved(4) and check(gate, 4, consumer)
    assert fence.taken == [4, 4]


def test_an_append_that_failed_otherwise_fences_and_catches_up_again():
    fence = Fence()
    gate = WriterGate(TOPIC, fence)
    consumer = Consumer(end=3, position=3)
    assert check(gate, 5, consumer)
    gate.append_failed(5, by_another=False)
    consumer.end = 6  # the append may have committed after all: its end is the new target
    assert not check(gate, 5, consumer)
    consumer.position_ = 6
    assert check(gate, 5, consumer)
    assert fence.taken == [5, 5] and consumer.ends_read == 2


def rec(partition: int, n: int) -> Any:
    return SimpleNamespace(partition=partition, offset=n, n=n)


def test_commands_wait_for_their_gate_in_order_and_go_first_once_it_opens():
    gate = WriterGate(TOPIC, Fence())
    gate.open.add(1)
    queue = CommandQueue(limit=10)
    now, refused = queue.take([rec(0, 1), rec(1, 2), rec(0, 3)], gate)
    assert [r.n for r in now] == [2] and refused == []
    assert [r.n for r in queue.waiting[0]] == [1, 3] and len(queue) == 2
    gate.open.add(0)
    now, refused = queue.take([rec(0, 4)], gate)
    assert [r.n for r in now] == [1, 3, 4] and refused == [] and len(queue) == 0


def test_commands_beyond_the_limit_are_refused_and_a_revoke_hands_back_every_waiting_one():
    gate = WriterGate(TOPIC, Fence())
    queue = CommandQueue(limit=3)
    now, refused = queue.take([rec(0, n) for n in range(5)], gate)
    assert now == [] and [r.n for r in refused] == [3, 4]
    now, refused = queue.take([rec(1, 9)], gate)
    assert [r.n for r in refused] == [9]
    assert [r.n for r in queue.drain()] == [0, 1, 2] and len(queue) == 0


def test_commands_of_a_partition_another_worker_writes_are_handed_on_at_once():
    gate = WriterGate(TOPIC, Fence())
    gate.append_failed(0, by_another=True)
    now, refused = CommandQueue().take([rec(0, 1)], gate)
    assert [r.n for r in now] == [1]  # decided as "moved": 503 unavailable


def test_an_answer_reaches_only_the_request_for_the_same_aggregate_and_command_id():
    async def scenario() -> None:
        sent: list[bytes] = []

        async def produce(topic: str, key: bytes, value: bytes, partition: int, timeout: float) -> None:
            sent.append(key)

        trip = CommandRoundTrip(url="http://me", command_topic="cmds", partitions=4, produce=produce,
                                spawn=lambda aw: asyncio.ensure_future(aw))
        command = {"command_id": "same", "aggregate_id": "a-1"}
        waiting = asyncio.ensure_future(trip.submit(command, timeout=5))
        while not trip.waiters:
            await asyncio.sleep(0.001)
        trip.resolve("a-2", "same", 200, {"version": 9})  # another aggregate's command with the same id
        await asyncio.sleep(0.01)
        assert not waiting.done()
        trip.resolve("a-1", "same", 200, {"version": 1})
        assert await waiting == (200, {"version": 1})
        assert sent == [b"a-1"]

    asyncio.run(scenario())


def test_not_ready_is_sent_again_after_a_pause_that_doubles():
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        trip: CommandRoundTrip

        async def produce(topic: str, key: bytes, value: bytes, partition: int, timeout: float) -> None:
            times.append(loop.time())
            answer = (503, {"error": "not_ready"}) if len(times) < 4 else (200, {"version": 1})
            loop.call_soon(trip.resolve, "a-1", "c-1", *answer)

        trip = CommandRoundTrip(url="http://me", command_topic="cmds", partitions=4, produce=produce,
                                spawn=lambda aw: asyncio.ensure_future(aw))
        assert await trip.submit({"command_id": "c-1", "aggregate_id": "a-1"}, timeout=5) == (200, {"version": 1})
        return times

    times = asyncio.run(scenario())
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 3
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, gaps


@pytest.mark.parametrize("raw, seconds", [("", 7 * 86400), ("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200),
                                          ("7d", 604800), ("2D", 172800)])
def test_the_command_id_ttl_takes_seconds_or_a_unit(raw, seconds):
    from projector.runtime.config import Settings

    assert Settings.from_env({"PROJECTOR_COMMAND_ID_TTL": raw}).command_id_ttl == seconds


@pytest.mark.parametrize("raw", ["soon", "0", "-5m", "1w", "1.5h"])
def test_a_command_id_ttl_that_is_not_a_duration_says_so(raw):
    from projector.runtime.config import Settings
    from projector.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="PROJECTOR_COMMAND_ID_TTL must be"):
        Settings.from_env({"PROJECTOR_COMMAND_ID_TTL": raw})


def test_the_writers_retry_a_transaction_after_2_ms_not_aiokafkas_20():
    import inspect

    import aiokafka.producer.sender as sender

    from projector.runtime import fencing

    # aiokafka reads the module's constant when Kafka answers ConcurrentTransactions: an aiokafka
    # that renames it fails here, not as a command round trip 20 ms slower per append.
    assert "return BACKOFF_OVERRIDE" in inspect.getsource(sender)
    assert sender.BACKOFF_OVERRIDE == fencing.TRANSACTION_RETRY_BACKOFF == 0.002
