"""Batch delivery of records to projector, under Faust's own tracking, acks and commits.

Faust hands every fetched message to its conductor one at a time, through
``wait_first(callback(message), suspend_flow.wait())``, which creates tasks
for each message; a no-op agent tops out near 9k events/s on this machine.
:class:`BatchingConsumer` keeps Faust's fetch loop but, for the topics in
``app.batch_handlers``, collects each fetched batch and calls the handler
once with all of it. The messages are tracked before and acked after, exactly
as a stream would do, so Faust's commit logic (commit the highest contiguous
acked offset, flush the producer first), its rebalance handshake (wait until
no message is unacked) and its offset bookkeeping all stay in charge. Topics
without a batch handler go through Faust's usual path.

Records of a global table's changelog (the control topic) also go to the
table's applier in ``app.global_appliers`` as they are fetched, besides
Faust's path: Faust puts changelog records on a queue that it clears when a
rebalance's recovery ends (``clear_on_resume``), after the consumer has moved
past them, so a global table loses the records queued at that moment. The
applier skips records it has seen, whichever path brings them first.
"""

from __future__ import annotations

import asyncio
import gc
from time import monotonic
from typing import Any, Awaitable, Callable, Optional, Sequence, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

from projector.runtime.slicing import TimeSlice

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]


class BatchingConsumer(faust_aiokafka.Consumer):
    #: Set while no fetch is being delivered (see :meth:`finish_fetch`).
    _idle: Optional[asyncio.Event] = None
    #: Set by :meth:`finish_fetch`: take no new fetch, the worker is stopping.
    _no_more_fetches: bool = False
    #: Stream partitions Faust resumed, held back until its seek of them is done (see :meth:`perform_seek`).
    _held_for_seek: frozenset = frozenset()
    _seek_lock: Optional[asyncio.Lock] = None

    async def finish_fetch(self, timeout: float) -> bool:
        """Take no new fetch, and wait until the one being delivered is folded and acked.

        Faust stops a worker by cancelling its fetch loop and only then
        committing what was acked: a batch being folded at that moment is cut
        off, its records are never acked, and the worker that takes the
        partition over reads them again. Called first on shutdown, this lets
        that batch finish, so the final commit covers everything folded.
        Returns False if the batch did not finish within ``timeout`` seconds.
        """
        self._no_more_fetches = True
        idle = self._idle
        if idle is None or idle.is_set():
            return True
        try:
            await asyncio.wait_for(idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def on_partitions_revoked(self, revoked: set) -> None:
        """Commit what is acked on ``revoked`` before Faust forgets it, then let Faust revoke.

        Faust's revoke first drops its bookkeeping of the revoked partitions
        (acked offsets, committed offsets) and only then waits for the
        messages in hand and commits. Offsets acked since the last periodic
        commit (up to a commit interval of work) were so never committed, and
        whoever got the partition next read them again: at a rebalance, with
        the eager protocol, even this worker for the partitions it keeps.
        """
        self._held_for_seek = self._held_for_seek - frozenset(revoked)
        await self._commit_acked(revoked)
        self.log.info("partitions revoked, committed before: %s", self.commit_positions(revoked))
        await super().on_partitions_revoked(revoked)
        # Faust has waited for the messages in hand and committed them: anything left here is read again.
        self.log.info("partitions revoked, committed after the batch in hand: %s", self.commit_positions(revoked))

    def resume_partitions(self, tps: Any) -> None:
        """Faust's resume, but batch-handled partitions wait for the seek that follows (:meth:`perform_seek`).

        Faust resumes the stream partitions only at the end of a rebalance,
        just before its seek; :meth:`release_held` resumes them at its very end.
        """
        tps = set(tps)
        handlers = getattr(self.app, "batch_handlers", {})
        held = {tp for tp in tps if tp.topic in handlers}
        self._held_for_seek = self._held_for_seek | held
        super().resume_partitions(tps - held)

    async def perform_seek(self) -> None:
        """Faust's seek of the stream partitions to their committed offsets, one seek at a time.

        After a rebalance Faust's recovery resumes the stream partitions and
        only then seeks them to their committed offsets. And a fetch that finds
        the flow stopped (a rebalance began) seeks too, on its own, and may
        finish late, after the recovery's. Records delivered before a seek
        finished were folded and acked, and the seek then moved the partition
        back to its committed offset: the same records came again. So seeks run
        one at a time, and the stream partitions the recovery resumes wait
        (:meth:`resume_partitions`) until it has sought them
        (:meth:`release_held`, at the end of the rebalance).
        """
        if self._seek_lock is None:
            self._seek_lock = asyncio.Lock()
        async with self._seek_lock:
            await super().perform_seek()

    def release_held(self) -> None:
        """Resume the stream partitions held since their resume (Faust's rebalance is over)."""
        held, self._held_for_seek = self._held_for_seek, frozenset()
        if held:
            assigned = self.assignment()
            super().resume_partitions({tp for tp in held if tp in assigned})

    async def wait_empty(self) -> None:
        """Faust's wait until every message in hand is acked, and its last commit; then what is still acked.

        A commit that finds another under way (the periodic one) waits for it
        and returns without committing: what was acked after that one took its
        offsets would stay uncommitted at the revoke or stop this wait ends.
        """
        await super().wait_empty()
        await self._commit_acked(None)

    async def _commit_acked(self, tps: Optional[set]) -> None:
        """Commit until no offset acked on ``tps`` (None: any partition) waits for a commit.

        Nothing new is acked meanwhile (the flow is stopped, or the batch in
        hand is still being folded), so this ends; at most a few rounds, in
        case the periodic commit was under way.
        """
        for _ in range(5):
            waiting = [tp for tp, acked in self._acked.items() if acked and (tps is None or tp in tps)]
            if not waiting:
                return
            before = {tp: self._committed_offset[tp] for tp in waiting}
            await self.commit(set(waiting))
            if all(self._committed_offset[tp] == before[tp] for tp in waiting) and self._commit_fut is None:
                return  # nothing committable (a gap at the head of the acked offsets): Faust's case, not ours

    def commit_positions(self, tps: Optional[set] = None) -> str:
        """What is committed on each partition of ``tps`` (default: the assignment) of an acked topic.

        Logged at each revoke and at the stop. Offsets acked but not committed,
        or messages not acked, are read again by the partition's next owner.
        """
        acks_enabled_for = self.app.topics.acks_enabled_for
        unacked: dict = {}
        for message in list(self._unacked_messages):
            unacked[message.tp] = unacked.get(message.tp, 0) + 1
        parts = []
        for tp in sorted(self.assignment() if tps is None else tps):
            if not acks_enabled_for(tp.topic):
                continue
            committed = self._committed_offset.get(tp)
            acked = self._acked.get(tp)
            if committed is None and not acked and not unacked.get(tp):
                continue  # nothing read on it yet
            part = f"{tp.topic}[{tp.partition}] committed {committed}"
            if acked:
                part += f", NOT committed: {len(acked)} acked up to {max(acked)}"
            if unacked.get(tp):
                part += f", NOT acked: {unacked[tp]}"
            parts.append(part)
        return "; ".join(parts) or "nothing read"

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised on real Kafka
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        if self._idle is None:
            self._idle = asyncio.Event()
            self._idle.set()
        idle = self._idle
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if self._no_more_fetches:
                    await self.sleep(1.0)
                    continue
                self.diag.set_flag(CONSUMER_FETCHING)
                ait = self.getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop or self._no_more_fetches:
                    continue
                # Pause the cyclic collector for one fetch and its batch: they
                # allocate tens of thousands of short-lived, acyclic objects,
                # and the full passes that triggers in a heap of Faust objects
                # cost more than the work itself. It runs again between fetches.
                gc_was_enabled = gc.isenabled()
                gc.disable()
                idle.clear()
                try:
                    await self._take_fetch(ait)
                finally:
                    idle.set()
                    if gc_was_enabled:
                        gc.enable()
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _take_fetch(self, ait: Any) -> None:
        """Deliver one fetch: batch-handled topics in one call per handler, the rest one by one."""
        handlers: dict[str, BatchHandler] = getattr(self.app, "batch_handlers", {})
        appliers: dict[str, Callable[[Any], None]] = getattr(self.app, "global_appliers", {})
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        batches: dict[BatchHandler, list] = {}
        num_since_yield = 0
        async for tp, message in ait:
            num_since_yield += 1
            if num_since_yield > 100:
                await asyncio.sleep(0)
                num_since_yield = 0
            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is not None and offset < r_offset:
                continue  # already read (Faust drops these too)
            gap = offset - (r_offset or 0)
            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            applier = appliers.get(message.topic)
            if applier is not None:
                applier(message)
            handler = handlers.get(message.topic)
            if handler is not None:
                # track_message() without its per-message sensor calls: projector
                # keeps its own counters per batch.
                self._unacked_messages.add(message)
                batches.setdefault(handler, []).append(message)
                set_read_offset(tp, offset)
                continue
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            set_read_offset(tp, offset)
        inbound_time = self.app.monitor.stream_inbound_time
        # Handlers run in the order of app.batch_handlers: events are folded
        # before the command side decides on the state they leave.
        order = {h: i for i, h in enumerate(handlers.values())}
        for handler, messages in sorted(batches.items(), key=lambda item: order.get(item[0], len(order))):
            await handler(messages)
            slice_ = TimeSlice()
            for i, message in enumerate(messages):
                self.ack(message)
                if i % 64 == 63:
                    await slice_.check()
            # Faust's liveness check ("stream has not started processing")
            # looks at when a stream last took an event of each partition.
            now = monotonic()
            for tp in {m.tp for m in messages}:
                inbound_time[tp] = now
        if batches and commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
