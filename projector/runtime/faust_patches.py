"""Every use of Faust's private names, in one module: one named patch each.

Checked against **faust-streaming 0.15.3** (with mode-streaming 0.7.1 and
aiokafka 0.14.0, as pinned in ``pyproject.toml``). :data:`FAUST_PRIVATE_NAMES`
lists each private name used here; ``tests/unit/runtime/test_faust_patches.py``
fails if the pinned Faust no longer has one, or if another version is
installed. Re-check each patch's "without it" before changing the pin.

The patches:

1. :class:`BatchingConsumer` (batch delivery, with its rebalance fixes).
   Without it Faust delivers one message at a time through tasks (a no-op
   agent tops out near 9k events/s), commits late at a revoke, and folds
   records twice around a rebalance's seek.
2. :func:`keep_changelog_records_on_resume`. Without it a standby copy drops
   the changelog record queued when a rebalance ends, for good.
3. :func:`check_restore_offsets`. Without it a table partition whose stored
   offset lies outside its changelog (deleted and recreated, or cut by
   retention) keeps stale rows or silently skips records.
4. :class:`PatchedApp` (``_new_transport``, ``_stop_consumer``,
   ``on_rebalance_end``). Without it the batching consumer is not used, a
   batch being folded at shutdown is cut off, and held partitions are never
   resumed after a rebalance.
5. :class:`GlobalTableOnTopic` (``_changelog_topic_name``). Without it a
   global table cannot read an existing topic (the control topic): Faust's
   assignor looks the table's partitions up by that name and the group hangs.
6. :class:`StaticMember` (aiokafka's group coordinator, with a group
   instance id). Without it a static member never leaves the group on a
   clean stop (its partitions wait out the session timeout), and one fenced
   by a second worker with the same instance id rejoins and fences that one
   in turn, every few seconds, instead of stopping.
7. Accessors for Faust state projector reads: :func:`read_offset`,
   :func:`active_partitions`, :func:`raw_producer`, :func:`partition_db`,
   :func:`forget_key`, :func:`open_partition_dbs`.

Batch delivery (1), in more detail:
Batch delivery of records to projector, under Faust's own tracking, acks and commits.

Faust hands every fetched message to its conductor one at a time, through
``wait_first(callback(message), suspend_flow.wait())``, which creates tasks
for each message; a no-op agent tops out near 9k events/s on this machine.
:class:`BatchingConsumer` keeps Faust's fetch loop but, for the topics in
``app.batch_handlers``, hands each fetch's records to the handler in one
call, as aiokafka returned them: no Faust ``Message`` per record. Each
partition's records are tracked as unacked from the moment the fetch
returns and acked in bulk after the handler, only while the partition is
still assigned in the same generation (:meth:`BatchingConsumer._take_fetch`),
so Faust's commit logic (commit the highest contiguous acked offset, flush
the producer first), its rebalance handshake (wait until no message is
unacked) and its offset bookkeeping all stay in charge. Topics without a
batch handler go through Faust's usual path.

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
import logging
from time import monotonic
from typing import Any, Awaitable, Callable, Optional, Sequence, cast

import faust
from aiokafka import errors as aiokafka_errors
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.group import HeartbeatRequest, HeartbeatRequest_v1, JoinGroupRequest
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String
from faust.assignor.client_assignment import ClientMetadata
from faust.exceptions import ConsumerNotStarted
from faust.tables.globaltable import GlobalTable
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

from projector.runtime.errors import InstanceFenced

log = logging.getLogger(__name__)

#: The faust-streaming release these patches were checked against.
CHECKED_AGAINST = "0.15.3"

#: (where, private name, what projector does with it), for every private name used here.
FAUST_PRIVATE_NAMES: tuple[tuple[str, str, str], ...] = (
    ("faust.transport.drivers.aiokafka.Consumer", "_drain_messages", "replaced: batch delivery"),
    ("faust.transport.consumer.Consumer", "_read_offset", "read and advanced per delivered message"),
    ("faust.transport.consumer.Consumer", "_unacked_messages", "each partition's records in hand, until acked"),
    ("faust.transport.consumer.Consumer", "_wait_next_records", "a fetch's records, as aiokafka returns them"),
    ("faust.transport.consumer.Consumer", "_buffered_partitions", "partitions a fetch may still deliver"),
    ("faust.transport.consumer.Consumer", "_acked_index", "offsets acked, in bulk"),
    ("faust.transport.consumer.Consumer", "_waiting_for_ack", "woken when a batch is acked or dropped"),
    ("faust.transport.drivers.aiokafka.Consumer", "_to_message", "a Faust message, for topics without a handler"),
    ("faust.transport.consumer.Consumer", "_acked", "committed at revoke and stop"),
    ("faust.transport.consumer.Consumer", "_committed_offset", "compared around a commit"),
    ("faust.transport.consumer.Consumer", "_commit_fut", "a commit under way"),
    ("faust.transport.consumer.Consumer", "_commit_every", "commit after so many acks"),
    ("faust.transport.consumer.Consumer", "_n_acked", "acks since the last commit"),
    ("faust.transport.consumer.Consumer", "_add_gap", "offsets skipped in a fetch"),
    ("mode.Service", "_stopped", "the fetch loop's stop check"),
    ("faust.app.base.App", "_new_transport", "replaced: the batching transport"),
    ("faust.app.base.App", "_stop_consumer", "wrapped: finish the batch first"),
    ("faust.app.base.App", "_consumer", "the consumer, if started"),
    ("faust.tables.base.Collection", "_changelog_topic_name", "replaced: a global table on an existing topic"),
    ("faust.tables.recovery.Recovery", "_build_offsets", "wrapped: check the stored offsets first"),
    ("mode.utils.queues.FlowControlEvent", "_suspend", "resume without clearing the changelog queue"),
    ("mode.utils.queues.FlowControlEvent", "_resume", "resume without clearing the changelog queue"),
    ("mode.utils.queues.FlowControlEvent", "_queues", "resume without clearing the changelog queue"),
    ("faust.assignor.partition_assignor.PartitionAssignor", "_active_tps", "this worker's active partitions"),
    ("faust.transport.drivers.aiokafka.Producer", "_ensure_producer", "the aiokafka producer, for batch appends"),
    ("faust.stores.rocksdb.Store", "_db_for_partition", "each partition's RocksDB database"),
    ("faust.stores.rocksdb.Store", "_dbs", "the open partition databases"),
    ("faust.stores.rocksdb.Store", "_key_index", "Faust's key-to-partition cache, dropped on clear"),
    ("faust.transport.drivers.aiokafka.Consumer", "_new_consumer_thread", "replaced: read committed records only"),
    ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread", "_create_worker_consumer",
     "wrapped: read committed records only"),
    ("aiokafka.AIOKafkaConsumer", "_isolation_level", "set to read_committed before the consumer starts"),
    ("faust.tables.manager.TableManager", "_changelogs", "a table dropped at run time (an old read-model version)"),
    ("faust.tables.manager.TableManager", "_channels", "a table dropped at run time (an old read-model version)"),
    ("faust.transport.conductor.Conductor", "_topics", "a table's changelog dropped at run time"),
    ("faust.transport.conductor.Conductor", "_update_indices", "resubscribing without a table's changelog"),
    ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread", "_consumer", "the aiokafka consumer, once started"),
    ("aiokafka.AIOKafkaConsumer", "_coordinator", "its group coordinator: static membership"),
    ("aiokafka.consumer.group_coordinator.GroupCoordinator", "_send_req",
     "wrapped: heartbeats with the instance id, FENCED_INSTANCE_ID seen"),
    ("faust.assignor.partition_assignor.PartitionAssignor", "_decompress", "the URL an assignment was made for"),
    ("aiokafka.consumer.group_coordinator.GroupCoordinator", "_maybe_leave_group",
     "replaced: a static member leaves on a clean stop (LeaveGroup v3)"),
)


# --- 1. batch delivery ---------------------------------------------------------------------

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]


class CommittedReadsThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose aiokafka consumer reads only committed records (``read_committed``).

    Faust reads committed records only under ``processing_guarantee=exactly_once``.
    projector needs it always: the command side appends in Kafka transactions
    (:mod:`projector.runtime.fencing`), and an append of a writer that was
    fenced is aborted, never to be folded. Records of producers that use no
    transactions are read as before.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # read by the fetcher aiokafka makes at start()
        return consumer

    async def on_start(self) -> None:
        await super().on_start()  # makes and starts the aiokafka consumer: its group coordinator exists now
        instance_id = self.app.conf.consumer_group_instance_id
        if instance_id and self._consumer is not None:
            projector = getattr(self.app, "projector", None)
            leave = projector.settings.leave_on_stop if projector is not None else True
            member = StaticMember(self._consumer._coordinator, instance_id, self.crash_fenced, leave_on_stop=leave)
            member.install()
            member.watch_assignments(self.app.assignor, str(self.app.conf.canonical_url))

    def crash_fenced(self, error: Exception) -> None:
        """Called in the consumer's thread: crash the app (in its own loop) with ``error``."""
        app = self.app
        asyncio.run_coroutine_threadsafe(app.crash(error), app.loop)


class BatchingConsumer(faust_aiokafka.Consumer):
    #: Set while no fetch is being delivered (see :meth:`finish_fetch`).
    _idle: Optional[asyncio.Event] = None
    #: Set by :meth:`finish_fetch`: take no new fetch, the worker is stopping.
    _no_more_fetches: bool = False
    #: Stream partitions Faust resumed, held back until its seek of them is done (see :meth:`perform_seek`).
    _held_for_seek: frozenset = frozenset()
    _seek_lock: Optional[asyncio.Lock] = None

    def _new_consumer_thread(self) -> Any:
        return CommittedReadsThread(self, loop=self.loop, beacon=self.beacon)

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
                    await self._take_fetch(timeout=getattr(self.app, "fetch_wait", 1.0))
                    after_fetch = getattr(self.app, "after_fetch", None)
                    if after_fetch is not None and self.flow_active and not self.should_stop:
                        await after_fetch()
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

        The records of batch-handled topics go to their handler as aiokafka
        returned them (no Faust ``Message`` each), and are kept safe from a
        rebalance like this:

        1. As soon as the fetch returns, before anything awaits, each of its
           batch-handled partitions is tracked as unacked (one
           :class:`_InHand` per partition in Faust's set of unacked messages):
           a revoke from then on waits for them (Faust's ``wait_empty``).
        2. Before the handler, a flow stopped or a new generation (a rebalance
           began or went through) drops the batch: nothing is folded or acked,
           and the records are read again from the committed offsets by
           whoever owns the partitions after the rebalance (Faust's seek), as
           Faust's own ``getmany`` drops the rest of a fetch.
        3. After the handler, offsets are acked in bulk (Faust's ``ack``
           bookkeeping) only for partitions still assigned, in the same
           generation. A revoke that waited for the batch then commits them.
        """
        records, active_partitions = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return
        app = self.app
        if not self.flow_active:
            # As Faust's getmany: a rebalance stopped the flow; read again from the committed offsets.
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        generation_id = app.consumer_generation_id
        handlers: dict[str, BatchHandler] = getattr(app, "batch_handlers", {})
        appliers: dict[str, Callable[[Any], None]] = getattr(app, "global_appliers", {})
        read_offset = self._read_offset
        buffered = self._buffered_partitions
        unacked = self._unacked_messages
        acks_enabled_for = app.topics.acks_enabled_for
        # 1. Tracked before any await.
        in_hand: dict[BatchHandler, list[_InHand]] = {}
        others: list[tuple[Any, list]] = []
        gaps: list[tuple[Any, int, int]] = []
        for tp, recs in records.items():
            if not recs or (active_partitions is not None and tp not in active_partitions and tp not in buffered):
                continue
            try:
                highwater = self.highwater(tp)
            except AssertionError:
                # Unassigned since the fetch (a table dropped at a read-model switch changes the
                # subscription): its records are not this consumer's to deliver.
                continue
            app.monitor.track_tp_end_offset(tp, highwater)
            handler = handlers.get(tp.topic)
            if handler is None:
                others.append((tp, recs))
                continue
            r_offset = read_offset[tp]
            if r_offset is not None and recs[0].offset < r_offset:
                recs = [r for r in recs if r.offset >= r_offset]  # already read (Faust drops these too)
                if not recs:
                    continue
            if acks_enabled_for(tp.topic) and (
                recs[-1].offset - recs[0].offset != len(recs) - 1 or (r_offset and recs[0].offset - r_offset > 1)
            ):
                # Offsets with holes (transaction markers, compaction): gaps, so the commit can move past them.
                prev = r_offset
                for r in recs:
                    if prev and r.offset - prev > 1:
                        gaps.append((tp, prev + 1, r.offset))
                    prev = r.offset
            part = _InHand(tp, recs)
            unacked.add(part)
            in_hand.setdefault(handler, []).append(part)
            read_offset[tp] = recs[-1].offset
        try:
            for tp, start, end in gaps:
                await self._add_gap(tp, start, end)
            # The other topics (table changelogs, the control topic): Faust's path, one message at a time.
            for tp, recs in others:
                if not await self._take_one_by_one(tp, recs, appliers.get(tp.topic), generation_id):
                    break
            inbound_time = app.monitor.stream_inbound_time
            # Handlers run in the order of app.batch_handlers: events are folded
            # before the command side decides on the state they leave.
            order = {h: i for i, h in enumerate(handlers.values())}
            for handler, parts in sorted(in_hand.items(), key=lambda item: order.get(item[0], len(order))):
                # 2. Not folded if a rebalance began or went through since the fetch.
                if not self.flow_active or app.consumer_generation_id != generation_id:
                    break
                await handler([r for part in parts for r in part.records])
                # 3. Acked only while still this worker's.
                if app.consumer_generation_id != generation_id:
                    break
                assigned = self.assignment()
                self._ack_all([part for part in parts if part.tp in assigned])
                now = monotonic()
                for part in parts:
                    # Faust's liveness check ("stream has not started processing")
                    # looks at when a stream last took an event of each partition.
                    inbound_time[part.tp] = now
        finally:
            # Whatever was not acked is no longer in hand: a revoke waiting for it goes on.
            released = False
            for parts in in_hand.values():
                for part in parts:
                    if not part.acked:
                        part.acked = True
                        unacked.discard(part)
                        released = True
            if released:
                notify(self._waiting_for_ack)
        commit_every = self._commit_every
        if in_hand and commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    async def _take_one_by_one(self, tp: Any, recs: list, applier: Optional[Callable[[Any], None]],
                               generation_id: int) -> bool:
        """Faust's own path for a topic without a batch handler; False if a rebalance cut it short."""
        read_offset = self._read_offset
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        commit_every = self._commit_every
        to_message = self._to_message
        for n, record in enumerate(recs):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return False  # as Faust's getmany: the rest is read again after the rebalance
            if n % 100 == 99:
                await asyncio.sleep(0)
            offset = record.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue  # already read (Faust drops these too)
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
        return True

    def _ack_all(self, parts: "list[_InHand]") -> None:
        """Ack every record of ``parts`` at once: Faust's ``ack`` bookkeeping, in bulk."""
        acks_enabled_for = self.app.topics.acks_enabled_for
        with ack_lock:
            for part in parts:
                part.acked = True
                self._unacked_messages.discard(part)
                tp = part.tp
                if not acks_enabled_for(tp.topic):
                    continue
                offsets = [r.offset for r in part.records]
                committed = self._committed_offset[tp]
                if committed is not None and offsets[0] < committed:
                    offsets = [o for o in offsets if o >= committed]
                acked_index = self._acked_index[tp]
                if acked_index and not acked_index.isdisjoint(offsets):
                    offsets = [o for o in offsets if o not in acked_index]
                acked_index.update(offsets)
                self._acked[tp].extend(offsets)
                self._n_acked += len(offsets)
        notify(self._waiting_for_ack)


class _InHand:
    """One partition's records of a fetch, in Faust's set of unacked messages (a WeakSet) until acked."""

    __slots__ = ("tp", "records", "acked", "refcount", "__weakref__")

    def __init__(self, tp: Any, records: list) -> None:
        self.tp = tp
        self.records = records
        self.acked = False
        self.refcount = 1

    def __repr__(self) -> str:
        return f"<{len(self.records)} records of {self.tp.topic}[{self.tp.partition}] in hand>"


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer


# --- 2. standby copies keep their changelog records ------------------------------------------


def keep_changelog_records_on_resume(app: faust.App) -> None:
    """Faust's flow control, but resuming it no longer empties the queue of changelog records.

    Faust's tables read every changelog record (active recovery, standby
    copies, global tables) through one queue that flow control empties each
    time it resumes. The last resume of a rebalance comes after the standby
    partitions were resumed and fetching: the records queued at that moment
    (most often one, between two deliveries) were dropped while the consumer
    moved past them, and the standby copy lacked them for good. Once
    promoted, it folded on a stale row: a re-keyed group whose member record
    was dropped kept a wrong sum. Resuming now keeps what is queued: those
    records belong to the assignment being resumed, and the recovery applies
    each offset at most once. A revoke still empties the queue (the next
    recovery reads again from the offsets applied).
    """
    flow_control = app.flow_control
    changelog_queue = app.tables.changelog_queue

    def resume() -> None:
        flow_control._suspend.clear()
        flow_control._resume.set()
        for queue in list(flow_control._queues):
            if queue is not changelog_queue:
                queue.clear()

    flow_control.resume = resume  # type: ignore[method-assign]


# --- 3. stored changelog offsets are checked before a restore ---------------------------------


def check_restore_offsets(app: faust.App, tables: dict[str, Any], clear_partition: Callable[[str, int], int]) -> None:
    """Rebuild a table partition whose local offset does not fit its changelog, instead of trusting it.

    Faust restores a partition from the offset stored with it in RocksDB.
    That offset must lie within the changelog: at least its first
    record minus one, at most its last record. Past the end (the
    changelog was deleted and created again), Faust would keep rows the
    changelog no longer has; before the start (retention deleted the
    records that followed it), it would silently skip them. In both
    cases the worker says so, empties the partition (``clear_partition``,
    which returns the rows dropped) and rebuilds it from the changelog's
    first record.
    """
    recovery = app.tables.recovery
    build = recovery._build_offsets
    by_topic = {t.changelog_topic.get_topic_name(): name for name, t in tables.items()}

    async def checked(consumer: Any, tps: Any, destination: Any, title: str) -> None:
        stored = {tp: destination.get(tp) for tp in tps if destination.get(tp) is not None}
        if stored:
            try:
                earliest = await consumer.earliest_offsets(*stored)
                highwaters = await consumer.highwaters(*stored)
            except Exception as exc:  # keep Faust's own behaviour if the broker cannot say
                log.warning("cannot check the stored changelog offsets: %r", exc)
                earliest, highwaters = {}, {}
            for tp, offset in stored.items():
                first, end = earliest.get(tp), highwaters.get(tp)
                table = by_topic.get(tp.topic)
                if first is None or end is None or table is None:
                    continue
                if offset >= end or offset < first - 1:
                    why = (f"past the changelog's end ({end}): the changelog was deleted or replaced"
                           if offset >= end else
                           f"before the changelog's first record ({first}): records after it were deleted "
                           "(retention)")
                    deleted = clear_partition(table, tp.partition)
                    log.error(
                        "%s partition %d: the local state is at changelog offset %d, %s. Rebuilding it "
                        "from the changelog's first record (%d local rows dropped).",
                        table, tp.partition, offset, why, deleted,
                    )
                    destination[tp] = None
        await build(consumer, tps, destination, title)

    recovery._build_offsets = checked


# --- 4. the app: batch delivery, a clean stop, held partitions resumed --------------------------


class PatchedApp(faust.App):
    """A Faust app that uses :class:`BatchingConsumer` and stops and rebalances with it."""

    #: Batch handlers by topic name (see :class:`BatchingConsumer`).
    batch_handlers: dict[str, Any]

    async def after_fetch(self) -> None:
        """Called by :class:`BatchingConsumer` after each round of its fetch loop (at least every second)."""

    def _new_transport(self) -> Any:
        return BatchingTransport(self.conf.broker_consumer, self)

    async def _stop_consumer(self) -> None:
        """On shutdown, let the batch being folded finish before Faust cancels the fetch loop.

        Faust cancels the loop first and commits afterwards; a batch cut off
        mid-fold is never acked, so its records would be read again by the
        next owner (harmless, the folds are idempotent, but not a clean
        hand-over).
        """
        consumer = self._consumer
        if isinstance(consumer, BatchingConsumer):
            if not await consumer.finish_fetch(timeout=self.conf.broker_session_timeout / 2):
                self.log.warning("the batch being folded did not finish in time; its records will be read again")
        await super()._stop_consumer()
        if isinstance(consumer, BatchingConsumer):
            try:
                log.info("stopping: %s", consumer.commit_positions())
            except ConsumerNotStarted:  # stopping before the consumer ever started: nothing was read
                log.info("stopping before the consumer started: nothing read, nothing to commit")

    def on_rebalance_end(self) -> None:
        """The rebalance is over: the stream partitions are sought, deliver them again (BatchingConsumer)."""
        super().on_rebalance_end()
        consumer = self._consumer
        if isinstance(consumer, BatchingConsumer):
            consumer.release_held()


# --- 5. a global table on an existing topic ---------------------------------------------------


class GlobalTableOnTopic(GlobalTable):
    """A Faust ``GlobalTable`` whose changelog is the existing topic ``topic``.

    Faust's assignor finds a global table's partitions by
    ``_changelog_topic_name()``; a ``changelog_topic=`` argument alone is
    ignored there, and the group hangs.
    """

    def __init__(self, app: Any, *, topic: str, **kwargs: Any) -> None:
        self._topic_on = topic
        super().__init__(app, **kwargs)

    def _changelog_topic_name(self) -> str:
        return self._topic_on


# --- 6. static group membership -------------------------------------------------------------

#: Kafka's FENCED_INSTANCE_ID: another member joined with this member's group instance id (aiokafka has no name for it).
FENCED_INSTANCE_ID = 82


class _HeartbeatResponse_v3(Response):
    API_KEY = 12
    API_VERSION = 3
    SCHEMA = Schema(("throttle_time_ms", Int32), ("error_code", Int16))


class _HeartbeatRequest_v3(RequestStruct):
    API_KEY = 12
    API_VERSION = 3
    RESPONSE_TYPE = _HeartbeatResponse_v3
    SCHEMA = Schema(("group", String("utf-8")), ("generation_id", Int32), ("member_id", String("utf-8")),
                    ("group_instance_id", String("utf-8")))


class StaticHeartbeatRequest(Request[HeartbeatRequest_v1 | _HeartbeatRequest_v3]):
    """A heartbeat that names the group instance id (v3), so a fenced member hears FENCED_INSTANCE_ID.

    aiokafka's heartbeat (v0/v1) has no instance id: the broker answers a
    fenced static member UNKNOWN_MEMBER_ID, and it joins again as the same
    instance, fencing the member that replaced it.
    """

    API_KEY = 12

    def __init__(self, group: str, generation_id: int, member_id: str, group_instance_id: str) -> None:
        self.fields = (group, generation_id, member_id, group_instance_id)

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class.API_VERSION < 3:
            return request_struct_class(*self.fields[:3])
        return request_struct_class(*self.fields)


class _LeaveGroupResponse_v3(Response):
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")),
                          ("error_code", Int16))),
    )


class _LeaveGroupRequest_v3(RequestStruct):
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponse_v3
    SCHEMA = Schema(("group_id", String("utf-8")),
                    ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))))


class StaticLeaveGroupRequest(Request[_LeaveGroupRequest_v3]):
    """LeaveGroup v3 (KIP-345): a static member leaves by its member id and instance id (aiokafka sends v0/v1 only)."""

    API_KEY = 13

    def __init__(self, group: str, member_id: str, group_instance_id: str) -> None:
        self.fields = (group, [(member_id, group_instance_id)])

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(*self.fields)


class StaticMember:
    """aiokafka's group coordinator as a static member (``group_instance_id``) that leaves when it stops.

    With a group instance id, a member that stops without leaving keeps its
    place in the group until its session times out: restarted within it, it
    takes its partitions back without a rebalance (KIP-345). aiokafka never
    leaves a static member's group, so a clean stop (SIGTERM) would leave its
    partitions unserved for the session timeout. Here a clean stop leaves
    with LeaveGroup v3, naming the member and its instance id: the group
    rebalances at once, as for a dynamic member. A crash or ``kill -9`` does
    not leave, and a restart within the session timeout is fast. With
    ``leave_on_stop`` false (PROJECTOR_LEAVE_ON_STOP=false) a clean stop keeps
    the place too, as Kafka Streams does: a rolling update moves no partition.

    Heartbeats name the instance id too (v3): a member replaced by another
    process with the same instance id hears FENCED_INSTANCE_ID and calls
    ``on_fenced`` (in the consumer's thread) instead of joining again, which
    would fence the other one in turn.
    """

    def __init__(self, coordinator: Any, instance_id: str, on_fenced: Callable[[Exception], None],
                 leave_on_stop: bool = True) -> None:
        self.coordinator = coordinator
        self.instance_id = instance_id
        self.leave_on_stop = leave_on_stop
        self.on_fenced = on_fenced
        self.closing = False
        self.fenced = False
        self.send_to_coordinator = coordinator._send_req

    def install(self) -> None:
        coordinator = self.coordinator
        close = coordinator.close

        async def closing() -> None:
            self.closing = True
            await close()

        coordinator._send_req = self.send
        coordinator._maybe_leave_group = self.maybe_leave_group
        coordinator.close = closing

    async def send(self, request: Any) -> Any:
        coordinator = self.coordinator
        if self.fenced and isinstance(request, JoinGroupRequest):
            # Joining again would fence the other worker in turn: this one is stopping.
            raise aiokafka_errors.KafkaError(f"instance id {self.instance_id} is fenced: not joining again")
        if isinstance(request, HeartbeatRequest):
            # Built just before this call, from the same three attributes.
            request = StaticHeartbeatRequest(coordinator.group_id, coordinator.generation, coordinator.member_id,
                                             self.instance_id)
        response = await self.send_to_coordinator(request)
        if getattr(response, "error_code", None) == FENCED_INSTANCE_ID and not self.fenced:
            self.fenced = True
            error = InstanceFenced(
                f"another worker joined the consumer group {coordinator.group_id!r} with this worker's "
                f"PROJECTOR_INSTANCE_ID={self.instance_id!r}, and Kafka fenced this one (FENCED_INSTANCE_ID). Two "
                "workers never share an instance id: give each its own PROJECTOR_INSTANCE_ID (the default, the "
                "host name and the web port, differs between workers), or stop the other worker. Stopping.")
            log.critical("%s", error)
            self.on_fenced(error)
        return response

    def watch_assignments(self, assignor: Any, url: str) -> None:
        """Rebalance when the group hands this member an assignment made for another URL, instead of failing.

        A static member that joins again in a stable group gets the assignment
        its instance id had, made for the URL the worker advertised then. Faust
        asserts it is its own: with another URL (the instance id moved to
        another host or port, or a second worker took it over) the consumer's
        coordination would end there, and the worker hang. Here the worker
        takes it, and joins again at once with its own metadata, which differs
        from the stored one: the group rebalances and every worker learns the
        new URL.
        """
        on_assignment = assignor.on_assignment
        coordinator = self.coordinator

        def checked(assignment: Any) -> None:
            made_for = ClientMetadata.loads(assignor._decompress(assignment.user_data)).url
            if made_for == url:
                return on_assignment(assignment)
            log.warning("the group's assignment for instance id %s was made for %s, but this worker is %s: "
                        "joining again, so the group rebalances with this worker's URL", self.instance_id,
                        made_for, url)
            try:
                on_assignment(assignment)
            except AssertionError:  # Faust's check of the URL, its last step
                pass
            coordinator.request_rejoin()

        assignor.on_assignment = checked

    async def maybe_leave_group(self) -> None:
        """Leave on a clean stop (LeaveGroup v3) unless told not to; otherwise, as aiokafka, keep the place."""
        coordinator = self.coordinator
        if self.closing and self.leave_on_stop and not self.fenced and coordinator.generation > 0:
            request = StaticLeaveGroupRequest(coordinator.group_id, coordinator.member_id, self.instance_id)
            try:
                response = await self.send_to_coordinator(request)
            except (aiokafka_errors.KafkaError, NotImplementedError) as exc:
                log.error("LeaveGroup request failed: %r", exc)
            else:
                codes = [response.error_code, *(m[2] for m in response.members)]
                if any(codes):
                    log.error("LeaveGroup request failed: %s",
                              ", ".join(aiokafka_errors.for_code(c).__name__ for c in codes if c))
                else:
                    log.info("LeaveGroup request succeeded (static member %s)", self.instance_id)
        coordinator.reset_generation()


# --- 7. Faust state projector reads -----------------------------------------------------------


def read_offset(consumer: Any, tp: Any) -> Optional[int]:
    """The offset of the last record the consumer delivered on ``tp`` (after a seek: the one before the next)."""
    return consumer._read_offset.get(tp)


def active_partitions(app: faust.App) -> Any:
    """The partitions this worker actively processes, as the assignor keeps them since its last assignment.

    ``assigned_actives()`` would build a new set on every call.
    """
    actives = getattr(app.assignor, "_active_tps", None)
    return app.assignor.assigned_actives() if actives is None else actives


def raw_producer(app: faust.App) -> Any:
    """The app's aiokafka producer (for appending whole batches), started by Faust."""
    return app.producer._ensure_producer()


def partition_db(store: Any, partition: int) -> Any:
    """The RocksDB database of one partition of a Faust table's store (``table.data``), opened if needed."""
    return store._db_for_partition(partition)


def forget_key(store: Any, key: bytes) -> None:
    """Drop ``key`` from Faust's key-to-partition cache (only its ``table[key]`` API reads it)."""
    store._key_index.pop(key, None)


async def drop_table(app: faust.App, table: Any) -> None:
    """Stop keeping a table at run time: Faust no longer recovers it nor reads its changelog.

    The consumer's subscription loses the changelog topic at once, which makes
    the group rebalance once. (Faust's conductor would resubscribe only 45 s
    after the change, and not at all if it came during a rebalance.)
    """
    manager = app.tables
    manager._changelogs.pop(table.changelog_topic.get_topic_name(), None)
    channel = manager._channels.pop(table, None)
    manager.pop(table.name, None)
    recovery = manager.recovery
    recovery.buffers.pop(table, None)  # changelog records held for a standby copy of it
    recovery.buffer_sizes.pop(table, None)
    if channel is not None:
        conductor = app.topics
        conductor._topics.discard(channel)
        await app.consumer.subscribe(await conductor._update_indices())


def open_partition_dbs(store: Any) -> dict[int, Any]:
    """The partition databases the store has open, by partition."""
    return store._dbs
