"""The changelog sink: a plan's records into Kafka, acknowledged, and only then into RocksDB.

The engine plans a batch (:class:`projector.core.engine.Plan`); the sink
carries it out so that a crash at any point leaves the changelog at or ahead
of local state, and the source offsets uncommitted (the batch is replayed,
and the version kept in every row turns the replay into duplicates).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, Optional, Sequence

from projector.core.engine import Plan
from projector.core.indexes import is_index_table
from projector.core.metrics import Metrics
from projector.runtime.slicing import TimeSlice
from projector.runtime.stores import WritableStore
from projector.runtime.waiters import RowWaiters

Writes = dict[tuple[str, int], dict[bytes, Optional[bytes]]]


class ChangelogSink:
    """Sends a plan's changelog records and messages, waits for Kafka, then writes the store and wakes readers."""

    def __init__(self, *, store: WritableStore, producer: Callable[[], Any], guard_tables: set[str],
                 metrics: Metrics, rows: RowWaiters, append: Callable[[Sequence[Any]], Awaitable[None]]) -> None:
        self.store = store
        #: Appends the command side's events (the writers' transactions, :mod:`projector.runtime.fencing`).
        self.append = append
        #: The started aiokafka producer (looked up at each batch: Faust starts it late).
        self.producer = producer
        self.guard_tables = guard_tables
        self.metrics = metrics
        self.rows = rows

    async def execute(self, plan: Plan, slice_: TimeSlice) -> None:
        """Send the plan to Kafka and wait for it, then write RocksDB.

        Three rounds, each waiting for Kafka before the next: the messages
        (repartition messages, dead letters), then the read-model rows, then
        the guard tables (the aggregate index and the members tables) that say
        what was applied. Whatever a crash leaves half-sent, a later round is
        never in Kafka without the earlier ones: rows never without the
        messages they caused (a replay that finds a row up to date sends
        nothing again), the index never without its rows. See ``Engine.guard_tables``.
        Secondary index entries (:mod:`projector.core.indexes`) go with the
        messages, for the same reason: a replay that finds a row up to date
        writes no entry again, while one that folds it again writes the same.
        """
        started = time.perf_counter()
        guards = self.guard_tables
        early = {slot: items for slot, items in plan.writes.items() if is_index_table(slot[0])}
        first = {slot: items for slot, items in plan.writes.items()
                 if slot[0] not in guards and slot not in early}
        second = {slot: items for slot, items in plan.writes.items() if slot[0] in guards}
        offsets: dict[tuple[str, int], int] = {}
        if plan.appends:
            # The command side's events: committed to the events topic before
            # any row, index entry or answer that counts them as applied. A
            # writer that was fenced raises here, and nothing is written.
            await self.append(plan.appends)
        if plan.sends or early:
            await self._send_and_wait(early, plan.sends, offsets, slice_)
        await self._send_and_wait(first, [], offsets, slice_)
        await self._send_and_wait(second, [], offsets, slice_)
        acked = time.perf_counter()
        for writes in (early, first, second):
            for (table, partition), items in writes.items():
                self.store.write(table, partition, items, offsets.get((table, partition)))
                await slice_.check()  # let requests in between RocksDB writes
        if self.rows:
            self.rows.wake(plan.writes)
        done = time.perf_counter()
        self.metrics.phase_seconds["rocksdb"] += done - acked
        self.metrics.observe_batch(done - started)

    async def _send_and_wait(
        self, writes: Writes, sends: Sequence[Any],
        offsets: dict[tuple[str, int], int], slice_: TimeSlice,
    ) -> None:
        """Send changelog records for ``writes`` and the ``sends``; wait until Kafka has them all.

        Records go out in aiokafka batches per topic and partition: one append
        per record instead of one send() with its futures and metadata checks.
        ``offsets`` gets the changelog offset each table partition reaches.
        """
        started = time.perf_counter()
        producer = self.producer()
        outgoing: dict[tuple[str, int], list[tuple[Optional[bytes], Optional[bytes], list]]] = defaultdict(list)
        changelog_of: dict[tuple[str, int], tuple[str, int]] = {}
        for (table, partition), items in writes.items():
            slot = (self.store.changelog_topic(table), partition)
            changelog_of[slot] = (table, partition)
            outgoing[slot].extend((key, value, []) for key, value in items.items())
        unpartitioned = []
        for out in sends:
            if out.partition is None:
                unpartitioned.append(out)
            else:
                outgoing[(out.topic, out.partition)].append((out.key, out.value, out.headers))
        pending: list[tuple[tuple[str, int], int, Any]] = []
        for (topic, partition), records in outgoing.items():
            batch = producer.create_batch()
            for key, value, headers in records:
                await slice_.check()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    pending.append(((topic, partition), batch.record_count(), await producer.send_batch(batch, topic, partition=partition)))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a record for {topic} does not fit in an empty producer batch")
            pending.append(((topic, partition), batch.record_count(), await producer.send_batch(batch, topic, partition=partition)))
        for out in unpartitioned:
            fut = await producer.send(out.topic, value=out.value, key=out.key, headers=out.headers or None)
            pending.append(((out.topic, -1), 1, fut))
        queued = time.perf_counter()
        self.metrics.phase_seconds["send"] += queued - started
        results = await asyncio.gather(*(fut for _, _, fut in pending))
        self.metrics.phase_seconds["await_acks"] += time.perf_counter() - queued
        for (slot, count, _), meta in zip(pending, results):
            table_slot = changelog_of.get(slot)
            if table_slot is not None:
                offsets[table_slot] = max(offsets.get(table_slot, -1), meta.offset + count - 1)
