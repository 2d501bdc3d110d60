"""The control table on Faust: a ``GlobalTable`` whose changelog is the control topic.

Faust's ``GlobalTable`` makes every worker consume every partition of the
table's changelog, at startup (recovery) and afterwards (live updates).
Pointing that changelog at the control topic gives Kafka Streams'
``addGlobalStore``: whoever writes the control topic, every worker applies it.
Four details make it reliable (each one a known way for it to fail):

- ``_changelog_topic_name()`` returns the control topic (:class:`GlobalTableOnTopic`). Faust's assignor
  finds a global table's partitions by that name; a ``changelog_topic=``
  argument alone is ignored there and the group hangs.
- One partition, and buffers of 1 record: recovery applies records in
  batches of ``recovery_buffer_size`` and, once recovered, a 1,000-record
  buffer would hold live entries back until it fills.
- No ``use_partitioner``: nothing writes through the table, so the control
  partition is an active-only changelog partition, which Faust resumes after
  recovery when its buffer is 1 (and keeps consuming as the topic grows).
- Faust queues changelog records for recovery and clears that queue when a
  rebalance's recovery ends, after the consumer has moved past them: a plain
  GlobalTable loses those records (one to three per five rebalances here).
  So the batching consumer also hands each control record to
  :meth:`ControlTable.apply_message` as it is fetched; the offsets kept in
  :class:`ControlState` make the two paths one.
- Faust also drops fetched records in other places (a fetch it stops
  iterating when a rebalance starts, partitions paused meanwhile). The table
  keeps every offset range it skipped, and :class:`GapFiller` reads those
  ranges again from Kafka; a worker is not ready while any range below the
  topic's end is unresolved. Records may so arrive out of order: each key
  keeps the offset that set it, so an older record never wins.
- If the control topic ends on a transaction marker, Faust's recovery would
  wait forever for an offset that is never delivered;
  :meth:`ControlRecovery.unstick` ends it once the table holds every
  record.
- :meth:`ControlTable.apply_changelog_batch` replaces the store write: every
  record, whether read in recovery or live, goes through
  :meth:`ControlState.apply`, which decodes JSON itself (raw serializers, so a
  malformed value cannot break Faust's decoding) and never raises. The Faust
  store stays an empty in-memory one; without persisted offsets, each start
  reads the compacted topic from its beginning, so a restarted worker (even
  after ``kill -9``) holds exactly what the topic holds, deletes included.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable, Optional

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from projector.core.control import ControlState
from projector.runtime.config import Settings
from projector.runtime.faust_patches import GlobalTableOnTopic
from projector.runtime.kafka import client_options

log = logging.getLogger(__name__)


class ControlTable(GlobalTableOnTopic):
    """Faust's global table, applying the control topic to a :class:`ControlState`."""

    def __init__(self, app: Any, *, topic: str, state: ControlState, **kwargs: Any) -> None:
        self.control = state
        super().__init__(
            app,
            topic=topic,
            name="control",
            partitions=1,
            recovery_buffer_size=1,
            standby_buffer_size=1,
            is_global=True,
            key_type=bytes,  # bytes: raw serializers, so a malformed value cannot break decoding
            value_type=bytes,
            store="memory://",
            help="the control table (CONTRACT §3), read in full by every worker",
            beacon=app.tables.beacon,
            **kwargs,
        )

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        for event in batch:
            self.apply_message(event.message)

    def apply_message(self, message: Any) -> None:
        """Apply one record of the control topic (a record already applied is skipped)."""
        self.control.apply(message.key, message.value, message.offset)


def _control_consumer(settings: Settings, role: str) -> AIOKafkaConsumer:
    """A group-less consumer for reading the control topic directly (``role`` names it to the broker)."""
    return AIOKafkaConsumer(
        **client_options(settings),
        client_id=f"{settings.app_id}-control-{role}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=15000,
    )


async def _apply_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, state: ControlState, start: int, end: int, timeout: float
) -> None:
    """Read offsets ``[start, end)`` of ``tp`` into ``state``; the offsets found empty there are resolved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    consumer.seek(tp, start)
    while await consumer.position(tp) < end:
        if loop.time() > deadline:
            raise TimeoutError(f"reading {tp.topic} offsets {start}..{end - 1} took more than {timeout:.0f} s")
        for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
            if record.offset >= end:
                break
            state.apply(record.key, record.value, record.offset)
    state.resolve(start, end)


async def records_end(settings: Settings, topic: str) -> int:
    """One past the last record of partition 0 of ``topic`` (0 when it holds none).

    That is its end offset, unless the log ends with transaction markers
    (a transactional writer), which take offsets but are never delivered:
    then it is one past the last record before them. Retries until the broker
    answers; a worker is not ready before this is known.
    """
    tp = TopicPartition(topic, 0)
    while True:
        consumer = _control_consumer(settings, "probe")
        try:
            await consumer.start()
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            start = (await consumer.beginning_offsets([tp]))[tp]
            window = 16
            while end > start:
                consumer.seek(tp, max(start, end - window))
                last = None
                while await consumer.position(tp) < end:
                    fetched = await consumer.getmany(tp, timeout_ms=1000)
                    for record in fetched.get(tp, []):
                        last = record.offset
                if last is not None:
                    return last + 1
                if end - window <= start:
                    return 0  # markers only
                window *= 16
            return 0
        except Exception as exc:
            log.warning("reading the end of %s failed (%r); retrying", topic, exc)
            await asyncio.sleep(1.0)
        finally:
            await consumer.stop()


async def read_control_topic(settings: Settings, timeout: float = 30.0) -> ControlState:
    """The control table as the topic holds it now: read from its beginning, the way a worker applies it."""
    state = ControlState()
    tp = TopicPartition(settings.control_topic, 0)
    consumer = _control_consumer(settings, "reader")
    try:
        await consumer.start()
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        state.target = end
        await _apply_range(consumer, tp, state, (await consumer.beginning_offsets([tp]))[tp], end, timeout)
        state.resolve(0, end)  # offsets below the log's start hold no record either
        return state
    finally:
        await consumer.stop()


async def write_control_topic(settings: Settings, key: str, value: Any) -> int:
    """Write one control entry straight to the control topic (``None``: delete); returns its offset.

    The caller checks the entry first (:meth:`ControlState.check_entry`, or
    :func:`projector.core.control.check_entry` with the catalog's settings).
    """
    from aiokafka import AIOKafkaProducer

    from projector.core.control import encode_value

    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    try:
        await producer.start()
        meta = await producer.send_and_wait(
            settings.control_topic, key=key.encode("utf-8"), value=encode_value(value), partition=0
        )
        return meta.offset
    finally:
        await producer.stop()


#: How often the gap filler looks for missing control offsets.
FILL_INTERVAL = 0.5


class GapFiller:
    """Re-reads missing offsets of the control topic straight from Kafka.

    :class:`ControlState` keeps the offsets it skipped between two records.
    Most are compaction or transaction markers, but Faust can also drop a
    fetched record on its way to the table (it filters fetched records against
    partitions paused meanwhile, and stops iterating a fetch when flow stops),
    after the consumer has moved past it. Every missing range is read again
    with a consumer of its own: records found there are applied (an older
    record never overwrites a newer one), the rest is resolved as empty. A
    tail that the worker's consumer has fetched but that has not reached the
    table for one whole interval is read the same way.
    """

    def __init__(self, settings: Settings, state: ControlState, position: Any) -> None:
        self.settings = settings
        self.state = state
        self.position = position  # async () -> the worker consumer's position on the control partition, or None
        self.tp = TopicPartition(settings.control_topic, 0)

    async def run(self) -> None:
        consumer: Optional[AIOKafkaConsumer] = None
        stalled: Optional[tuple[int, int]] = None
        try:
            while True:
                await asyncio.sleep(FILL_INTERVAL)
                try:
                    position = await self.position()
                except Exception as exc:  # not assigned yet, or a rebalance under way
                    log.debug("control partition position not known yet: %r", exc)
                    position = None
                if position is not None and position - 1 > self.state.seen:
                    if stalled == (position, self.state.seen):
                        self.state.note_end(position)
                    stalled = (position, self.state.seen)
                else:
                    stalled = None
                missing = self.state.missing
                if not missing:
                    continue
                try:
                    if consumer is None:
                        consumer = _control_consumer(self.settings, "filler")
                        await consumer.start()
                        consumer.assign([self.tp])
                    await _apply_range(consumer, self.tp, self.state, missing[0][0], missing[-1][1], 30.0)
                except Exception as exc:
                    log.warning("re-reading control offsets %s failed (%r); retrying", missing, exc)
                    if consumer is not None:
                        await consumer.stop()
                        consumer = None
        finally:
            if consumer is not None:
                await consumer.stop()


class ControlRecovery:
    """The worker's reading of the control topic: where it must get to at startup, and Faust's recovery of it.

    :meth:`capture_end` notes how far the control topic reaches when the
    worker starts (it is not ready before it has read that far);
    :meth:`unstick` ends Faust's recovery of the control partition once the
    control table holds all of it.
    """

    def __init__(self, app: Any, settings: Settings, state: ControlState) -> None:
        self.app = app
        self.settings = settings
        self.state = state
        self.tp = TP(settings.control_topic, 0)

    async def capture_end(self) -> None:
        """Note where the control topic ends at startup: the worker is not ready before it has read that far."""
        self.state.target = await records_end(self.settings, self.settings.control_topic)
        log.info(
            "control topic %s: %d records to read before this worker is ready",
            self.settings.control_topic, self.state.target,
        )

    async def position(self) -> Optional[int]:
        """This worker's consumer position on the control partition."""
        return await self.app.consumer.position(self.tp)

    async def unstick(self) -> None:
        """End Faust's recovery of the control topic once the control table holds all of it.

        Faust recovers a changelog partition until a record at its end offset
        minus one is applied. A control topic written by a transactional
        producer ends in a commit marker, which holds an offset but is never
        delivered, and a record Faust dropped is never counted either: its
        recovery, and with it the whole worker, would wait forever. The
        control table counts offsets itself (and re-reads what it misses), so
        once it holds every record up to the topic's end, that partition's
        recovery is marked done.
        """
        tp = self.tp
        recovery = self.app.tables.recovery
        while True:
            await asyncio.sleep(1.0)
            if not recovery.in_recovery:
                continue
            highwater = recovery.active_highwaters.get(tp)
            seen = recovery.active_offsets.get(tp)
            if highwater is None or seen is None or seen >= highwater:
                continue
            try:
                position = await self.position()
            except Exception as exc:  # not assigned (yet), or a rebalance under way
                log.debug("control partition position not known yet: %r", exc)
                continue
            if position is None or position <= highwater:
                continue  # still reading
            end = await records_end(self.settings, self.settings.control_topic)
            if self.state.offset + 1 >= end and recovery.active_offsets.get(tp, -1) < highwater:
                log.info(
                    "control table holds the control topic to its last record (offset %d); "
                    "its recovery is complete", end - 1,
                )
                recovery.active_offsets[tp] = highwater
