"""Batch delivery of records to projector, under Faust's own tracking, acks and commits.

Faust hands every fetched message to its conductor one at a time, through
``wait_first(callback(message), suspend_flow.wait())``, which creates tasks
for each message; a no-op agent tops out near 9k events/s on this machine.
:class:`BatchingConsumer` keeps Faust's fetch loop but, for the topics in
``app.batch_handlers``, hands each fetched batch to the handler in one call,
as the records aiokafka returned (no Faust ``Message`` per record). The batch
is tracked as unacked while it is folded and its offsets are acked in bulk
afterwards, with the bookkeeping Faust's ``ack`` does per message, so Faust's
commit logic (commit the highest contiguous acked offset, flush the producer
first), its rebalance handshake (wait until no message is unacked) and its
offset bookkeeping all stay in charge. Topics without a batch handler go
through Faust's usual path.

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
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]


class BatchingConsumer(faust_aiokafka.Consumer):
    #: Set while no fetch is being delivered (see :meth:`finish_fetch`).
    _idle: Optional[asyncio.Event] = None
    #: Set by :meth:`finish_fetch`: take no new fetch, the worker is stopping.
    _no_more_fetches: bool = False

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
                    await self._take_fetch(timeout=1.0)
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

    async def _take_fetch(self, timeout: float) -> None:
        """Deliver one fetch: batch-handled topics in one call per handler, the rest one by one.

        For batch-handled topics the records go to the handler as aiokafka
        returned them (topic, partition, offset, key, value...), without a
        Faust ``Message`` each; a stand-in object keeps the batch in Faust's
        set of unacked messages while it is folded (so a rebalance waits for
        it), and its offsets are acked in bulk afterwards, as
        :meth:`faust.transport.consumer.Consumer.ack` would ack them one by one.
        """
        records, active_partitions = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # As Faust's getmany: a rebalance stopped the flow; read again from the committed offsets.
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        app = self.app
        handlers: dict[str, BatchHandler] = getattr(app, "batch_handlers", {})
        appliers: dict[str, Callable[[Any], None]] = getattr(app, "global_appliers", {})
        read_offset = self._read_offset
        acks_enabled_for = app.topics.acks_enabled_for
        commit_every = self._commit_every
        generation_id = app.consumer_generation_id
        buffered = self._buffered_partitions
        batches: dict[BatchHandler, list[tuple[Any, list]]] = {}
        for tp, recs in records.items():
            if not self.flow_active or app.consumer_generation_id != generation_id:
                break  # a rebalance started: what was fetched is read again from the committed offsets
            if not recs or (active_partitions is not None and tp not in active_partitions and tp not in buffered):
                continue
            app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            r_offset = read_offset[tp]
            if r_offset is not None and recs[0].offset < r_offset:
                recs = [r for r in recs if r.offset >= r_offset]  # already read (Faust drops these too)
                if not recs:
                    continue
            topic = tp.topic
            handler = handlers.get(topic)
            applier = appliers.get(topic)
            if handler is None:
                await self._take_one_by_one(tp, recs, applier)
                continue
            if acks_enabled_for(topic) and (
                recs[-1].offset - recs[0].offset != len(recs) - 1 or (r_offset and recs[0].offset - r_offset > 1)
            ):
                # Offsets with holes (transaction markers, compaction): note the
                # gaps, so the commit can move past them.
                prev = r_offset
                for r in recs:
                    if prev and r.offset - prev > 1:
                        await self._add_gap(tp, prev + 1, r.offset)
                    prev = r.offset
            if applier is not None:
                for r in recs:
                    applier(r)
            read_offset[tp] = recs[-1].offset
            batches.setdefault(handler, []).append((tp, recs))
        inbound_time = app.monitor.stream_inbound_time
        # Handlers run in the order of app.batch_handlers: events are folded
        # before the command side decides on the state they leave.
        order = {h: i for i, h in enumerate(handlers.values())}
        for handler, parts in sorted(batches.items(), key=lambda item: order.get(item[0], len(order))):
            in_flight = _InFlight()
            self._unacked_messages.add(in_flight)
            await handler([r for _, recs in parts for r in recs])
            self._ack_all(parts)
            in_flight.acked = True
            self._unacked_messages.discard(in_flight)
            # Faust's liveness check ("stream has not started processing")
            # looks at when a stream last took an event of each partition.
            now = monotonic()
            for tp, _ in parts:
                inbound_time[tp] = now
        if batches and commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    async def _take_one_by_one(self, tp: Any, recs: list, applier: Optional[Callable[[Any], None]]) -> None:
        """Faust's own path, for topics without a batch handler (a global table's changelog)."""
        read_offset = self._read_offset
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        commit_every = self._commit_every
        to_message = self._to_message
        for record in recs:
            offset = record.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue
            if acks_enabled and r_offset and offset - r_offset > 1:
                await self._add_gap(tp, r_offset + 1, offset)
            message = to_message(tp, record)
            if applier is not None:
                applier(message)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            read_offset[tp] = offset

    def _ack_all(self, parts: list[tuple[Any, list]]) -> None:
        """Ack every record of ``parts`` at once: Faust's ``ack`` bookkeeping, in bulk."""
        with ack_lock:
            for tp, recs in parts:
                if not self.app.topics.acks_enabled_for(tp.topic):
                    continue
                committed = self._committed_offset[tp]
                acked_index = self._acked_index[tp]
                offsets = [r.offset for r in recs]
                if committed is not None and offsets[0] < committed:
                    offsets = [o for o in offsets if o >= committed]
                if acked_index and not acked_index.isdisjoint(offsets):
                    offsets = [o for o in offsets if o not in acked_index]
                acked_index.update(offsets)
                self._acked[tp].extend(offsets)
                self._n_acked += len(offsets)
        notify(self._waiting_for_ack)


class _InFlight:
    """Stands for a batch being folded in Faust's set of unacked messages (a WeakSet)."""

    __slots__ = ("acked", "refcount", "__weakref__")

    def __init__(self) -> None:
        self.acked = False
        self.refcount = 1


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
