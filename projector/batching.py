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

from projector.slicing import TimeSlice

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
