"""BatchingConsumer's delivery of one fetch: in bulk, tracked from the moment the fetch returns.

A unit test of the consumer's bookkeeping, with scripted fetches instead of a
broker (the fault tests in tests/integration run it against Kafka). The
rebalance cases are the race that made bulk delivery unsafe once: a batch that
was not tracked while the fetch's other records were delivered let a revoke
finish, and the batch was then folded and acked for partitions another worker
owned by then.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from projector.runtime.faust_patches import BatchingConsumer, PatchedApp

EVENTS = "t-events"
CHANGELOG = "t-accounts-changelog"  # a standby copy's changelog: Faust's own path, one message at a time

E0, E1, C0 = TP(EVENTS, 0), TP(EVENTS, 1), TP(CHANGELOG, 0)


def rec(tp: TP, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 1_700_000_000_000, 0, b"k", b"v", None, 1, 1, [])


class Harness:
    """A BatchingConsumer of an app that never connects, fed scripted fetches."""

    def __init__(self) -> None:
        # Faust's services run on the loop current when they are made: this test's own.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.app = PatchedApp("t-bulk", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
        self.consumer: BatchingConsumer = self.app.consumer
        c = self.consumer
        self.assigned = {E0, E1, C0}
        c.assignment = lambda: set(self.assigned)
        c.highwater = lambda tp: 1_000
        self.app.topics.acks_enabled_for = lambda topic: topic == EVENTS
        self.fetches: list[dict[TP, list[ConsumerRecord]]] = []
        self.handled: list[list[tuple[str, int, int]]] = []
        self.delivered: list[tuple[str, int, int]] = []
        #: Run while the handler folds, or while a message of the other topics is delivered.
        self.during_handler: Optional[Callable[[], Awaitable[None]]] = None
        self.during_callback: Optional[Callable[[], Awaitable[None]]] = None

        async def wait_next_records(timeout: float) -> tuple[dict, None]:
            return (self.fetches.pop(0) if self.fetches else {}), None

        async def handler(records: list[Any]) -> None:
            self.handled.append([(r.topic, r.partition, r.offset) for r in records])
            if self.during_handler is not None:
                await self.during_handler()

        async def callback(message: Any) -> None:
            self.delivered.append((message.topic, message.partition, message.offset))
            if self.during_callback is not None:
                await self.during_callback()

        async def commit(*args: Any, **kwargs: Any) -> bool:
            return True

        c._wait_next_records = wait_next_records
        c.callback = callback
        c.commit = commit
        self.app.batch_handlers = {EVENTS: handler}
        self.app.global_appliers = {}

    async def take(self, fetch: dict[TP, list[ConsumerRecord]]) -> None:
        self.fetches.append(fetch)
        await self.consumer._take_fetch(timeout=0)

    def tracked(self) -> set[TP]:
        """Partitions with records in hand that a revoke would wait for."""
        return {m.tp for m in list(self.consumer._unacked_messages) if not m.acked}

    def acked(self, tp: TP) -> list[int]:
        return sorted(self.consumer._acked.get(tp, []))

    def rebalance(self, keep: set[TP]) -> None:
        """A rebalance that went through: the flow stopped, a new generation, this worker keeps ``keep``."""
        self.consumer.stop_flow()
        self.app.consumer_generation_id += 1
        self.assigned = set(keep)


@pytest.fixture
def h() -> Any:
    harness = Harness()
    yield harness
    harness.loop.close()
    asyncio.set_event_loop(None)


def run(h: Harness, coro: Awaitable[Any]) -> Any:
    return h.loop.run_until_complete(asyncio.wait_for(coro, 10))


def test_a_fetch_goes_to_the_handler_in_one_call_and_is_acked_in_bulk(h):
    async def go() -> None:
        await h.take({E0: [rec(E0, o) for o in range(5)], E1: [rec(E1, o) for o in range(3)]})

    run(h, go())
    assert h.handled == [[(EVENTS, 0, o) for o in range(5)] + [(EVENTS, 1, o) for o in range(3)]]
    assert h.acked(E0) == [0, 1, 2, 3, 4] and h.acked(E1) == [0, 1, 2]
    assert h.consumer._n_acked == 8
    assert h.tracked() == set()
    assert h.consumer._read_offset[E0] == 4 and h.consumer._read_offset[E1] == 2


def test_records_already_read_are_not_delivered_again(h):
    async def go() -> None:
        await h.take({E0: [rec(E0, o) for o in range(5)]})
        await h.take({E0: [rec(E0, o) for o in range(3, 8)]})

    run(h, go())
    assert h.handled[1] == [(EVENTS, 0, o) for o in range(4, 8)]  # as Faust: offsets below the read offset
    assert h.acked(E0) == list(range(8))


def test_offsets_a_fetch_skips_are_noted_as_gaps_so_the_commit_moves_past_them(h):
    async def go() -> None:
        await h.take({E0: [rec(E0, 0), rec(E0, 1)]})
        await h.take({E0: [rec(E0, 3), rec(E0, 4), rec(E0, 7)]})  # 2, 5 and 6: transaction markers

    run(h, go())
    gaps = sorted((i.begin, i.end) for i in h.consumer._gap[E0])
    assert gaps == [(2, 4), (5, 8)]  # Faust's intervals: from after the last offset read up to and with the next
    assert h.acked(E0) == [0, 1, 3, 4, 7]


def test_other_topics_go_one_by_one_through_faust_before_the_batch(h):
    async def go() -> None:
        await h.take({C0: [rec(C0, 0), rec(C0, 1)], E0: [rec(E0, 0)]})

    run(h, go())
    assert h.delivered == [(CHANGELOG, 0, 0), (CHANGELOG, 0, 1)]
    assert h.handled == [[(EVENTS, 0, 0)]]
    assert h.acked(C0) == []  # not an acked topic


def test_the_batch_is_tracked_from_the_moment_its_fetch_returns(h):
    # A revoke waits for the records in hand (Faust's wait_empty). While the
    # fetch's other records are delivered, the batch must already count.
    seen: list[set[TP]] = []

    async def during_callback() -> None:
        seen.append(h.tracked())

    h.during_callback = during_callback
    run(h, h.take({C0: [rec(C0, 0)], E0: [rec(E0, 0), rec(E0, 1)], E1: [rec(E1, 0)]}))
    assert seen == [{E0, E1}]
    assert h.tracked() == set()


def test_a_rebalance_before_the_handler_drops_the_batch_unacked(h):
    # The rebalance goes through while the fetch's changelog records are
    # delivered: the batch is not folded (its partitions are read again from
    # the committed offsets by whoever owns them now) and nothing is acked.
    async def during_callback() -> None:
        h.rebalance(keep={E1, C0})

    h.during_callback = during_callback
    run(h, h.take({C0: [rec(C0, 0)], E0: [rec(E0, 0), rec(E0, 1)], E1: [rec(E1, 0)]}))
    assert h.handled == []
    assert h.acked(E0) == [] and h.acked(E1) == []
    assert h.tracked() == set()  # and a revoke waiting for them goes on


def test_a_partition_revoked_while_its_batch_folds_is_never_acked(h):
    async def during_handler() -> None:
        h.rebalance(keep={E1, C0})

    h.during_handler = during_handler
    run(h, h.take({E0: [rec(E0, 0), rec(E0, 1)], E1: [rec(E1, 0)]}))
    assert len(h.handled) == 1
    assert h.acked(E0) == []  # another worker owns it now: its offsets are not this worker's to commit
    assert h.acked(E1) == []  # a new generation: nothing of the old one is acked
    assert h.tracked() == set()


def test_a_revoke_that_waits_for_the_batch_gets_it_acked(h):
    # The flow stops (a revoke began and waits for the records in hand), but
    # the generation is the same: the batch was folded while this worker owned
    # the partitions, so it is acked and the revoke commits it.
    async def during_handler() -> None:
        h.consumer.stop_flow()

    h.during_handler = during_handler
    run(h, h.take({E0: [rec(E0, 0), rec(E0, 1)]}))
    assert h.acked(E0) == [0, 1]
    assert h.tracked() == set()


def test_a_handler_that_raises_leaves_nothing_tracked_or_acked(h):
    async def during_handler() -> None:
        raise RuntimeError("boom")

    h.during_handler = during_handler
    with pytest.raises(RuntimeError, match="boom"):
        run(h, h.take({E0: [rec(E0, 0)]}))
    assert h.acked(E0) == []
    assert h.tracked() == set()


def test_records_of_a_partition_unassigned_since_the_fetch_are_dropped_not_a_crash(h):
    """A table dropped at a read-model switch changes the subscription while a fetch holds its changelog's records."""
    def highwater(tp: TP) -> int:
        assert tp != C0, "Partition is not assigned"  # aiokafka's own check
        return 1_000

    h.consumer.highwater = highwater

    async def go() -> None:
        await h.take({C0: [rec(C0, 0)], E0: [rec(E0, 0), rec(E0, 1)]})

    run(h, go())
    assert h.handled == [[(EVENTS, 0, 0), (EVENTS, 0, 1)]]
    assert h.delivered == [] and h.acked(E0) == [0, 1]
