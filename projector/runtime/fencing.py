"""Fencing of the command side's writers: a Kafka transactional producer per partition of the events topic.

A writer that stalls past its session timeout (a long GC pause, a SIGSTOP, a
frozen VM) loses its partitions, but does not know it until it wakes up. A
new owner decides commands meanwhile. Without a fence, the stale writer's
append in flight would still reach the events topic, and its command would be
answered 200 while its event, at a version the new owner had already used,
is skipped as a duplicate: an acknowledged command lost.

Kafka's own fence closes that: each partition *p* of the events topic has one
transactional id, ``<app id>-writer-<p>``. A writer appends a batch's events
of *p* in a transaction of that id, and answers only after the commit.
Whoever takes *p* over first initialises the same id (:meth:`WriterFence.take`):
the broker bumps the id's epoch, aborts the old holder's open transaction, and
refuses every later write or commit of the old epoch (``ProducerFenced``). So a
writer that has lost its partition can never get an append acknowledged.

Readers see only committed events: the worker's consumer reads with
``isolation_level=read_committed`` (:mod:`projector.runtime.faust_patches`),
and an aborted append is never folded. After the fence, the new writer reads
the partition's end (the last stable offset) and folds up to it before
deciding (:class:`projector.runtime.command_side.WriterGate`): it decides on
everything the old writer ever committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Optional, Sequence

import aiokafka.producer.sender
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TransactionalIdAuthorizationFailed

from projector.runtime.config import Settings
from projector.runtime.kafka import KAFKA_WRITE_TIMEOUT, client_options

log = logging.getLogger(__name__)

#: Kafka aborts a writer's transaction left open this long (a writer stopped mid-append), so
#: read_committed readers of its partition are held up at most this long when nobody takes it over.
TRANSACTION_TIMEOUT_MS = 15_000


#: A transaction that follows another of the same producer waits until Kafka has written the
#: last one's markers (ConcurrentTransactions); aiokafka retries after 20 ms, the most of a
#: command's round trip (measured: an append in a transaction 24 ms at 20 ms, 5 ms at 2 ms).
#: Only transactional producers use it: the writers here.
TRANSACTION_RETRY_BACKOFF = 0.002
aiokafka.producer.sender.BACKOFF_OVERRIDE = TRANSACTION_RETRY_BACKOFF


class Fenced(Exception):
    """The writer of a partition could not append: another worker holds its transactional id, or Kafka failed.

    ``by_another`` is True when Kafka said another producer holds the id now.
    Otherwise the commit may still have gone through (Kafka did not answer
    in time): either way the writer must take the partition again, and
    catch up, before it decides another of its commands.
    """

    def __init__(self, partition: int, message: str, *, by_another: bool) -> None:
        super().__init__(message)
        self.partition = partition
        self.by_another = by_another


def transactional_id(settings: Settings, partition: int) -> str:
    """The transactional id of the writer of ``partition`` of the events topic."""
    return f"{settings.app_id}-writer-{partition}"


def writer_id_prefix(settings: Settings) -> str:
    """The prefix of every writer's transactional id (for ACLs)."""
    return f"{settings.app_id}-writer-"


def _producer(settings: Settings, partition: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        transactional_id=transactional_id(settings, partition),
        enable_idempotence=True,
        acks="all",
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        max_request_size=1024 * 1024,
        linger_ms=0,
    )


def _explain(settings: Settings, partition: int, exc: BaseException) -> str:
    name = transactional_id(settings, partition)
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        return (f"Kafka refuses the transactional id {name!r} to this worker: grant Write and Describe on "
                f"the transactional ids with the prefix {writer_id_prefix(settings)!r} (see the README's ACLs)")
    if isinstance(exc, asyncio.TimeoutError):
        return f"Kafka did not answer the writer {name!r} within {KAFKA_WRITE_TIMEOUT:.0f} s"
    return f"the writer {name!r} failed: {type(exc).__name__}: {exc}"


def _fenced(exc: BaseException) -> bool:
    """True when Kafka says another producer holds the transactional id now."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"ProducerFenced", "InvalidProducerEpoch", "InvalidTxnState"})


class _QuietFencedSender(logging.Filter):
    """Drop asyncio's "exception was never retrieved" for a fenced producer's sender: the append already said it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and "never retrieved" in record.getMessage() and _fenced(exc))


_quiet = _QuietFencedSender()


class WriterFence:
    """This worker's transactional producers, one per events partition it writes, fenced on take-over."""

    def __init__(self, settings: Settings, *, timeout: float = KAFKA_WRITE_TIMEOUT) -> None:
        self.settings = settings
        if _quiet not in logging.getLogger("asyncio").filters:
            logging.getLogger("asyncio").addFilter(_quiet)
        self.timeout = timeout
        self.producers: dict[int, Any] = {}
        #: Appends refused because another worker holds the partition's id now.
        self.fenced = 0

    def holds(self, partition: int) -> bool:
        return partition in self.producers

    async def take(self, partition: int) -> None:
        """Hold ``partition``'s transactional id: fence whoever held it, and abort its open transaction.

        A new producer is made each time, so a take-over after any rebalance
        fences every earlier holder, this worker's own included. Returns once
        the broker has given this producer the id's new epoch (the old
        holder's transaction is then aborted or committed, never pending).
        """
        await self.drop(partition)
        producer = _producer(self.settings, partition)
        try:
            await asyncio.wait_for(self._init(producer), self.timeout)
        except Exception as exc:
            await _stop(producer)
            raise Fenced(partition, _explain(self.settings, partition, exc), by_another=False) from exc
        self.producers[partition] = producer
        log.info("writer of partition %d: holds %s (earlier holders fenced)", partition,
                 transactional_id(self.settings, partition))

    @staticmethod
    async def _init(producer: Any) -> None:
        await producer.start()
        # An empty transaction waits for the producer id and epoch: InitProducerId is the fence.
        await producer.begin_transaction()
        await producer.abort_transaction()

    async def drop(self, partition: int) -> None:
        producer = self.producers.pop(partition, None)
        if producer is not None:
            await _stop(producer)

    async def drop_all(self) -> None:
        for partition in list(self.producers):
            await self.drop(partition)

    async def append(self, sends: Sequence[Any]) -> None:
        """Append ``sends`` (records of the events topic), each partition's in one transaction.

        The partitions' transactions run side by side. :class:`Fenced` when
        one does not commit (the one another worker fenced, if any); the
        producers that failed are dropped, and their partitions must be taken
        (:meth:`take`) again before their next append. The other partitions'
        transactions may have committed.
        """
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for send in sends:
            by_partition[send.partition].append(send)
        for partition in by_partition:
            if partition not in self.producers:
                raise Fenced(partition, f"this worker does not hold the writer of partition {partition}",
                             by_another=False)
        # Each partition's transaction on its own producer: side by side.
        results = await asyncio.gather(*(
            asyncio.wait_for(self._commit(self.producers[partition], records), self.timeout)
            for partition, records in by_partition.items()), return_exceptions=True)
        failed: Optional[Fenced] = None
        for partition, result in zip(by_partition, results):
            if not isinstance(result, BaseException):
                continue
            by_another = _fenced(result)
            if by_another:
                self.fenced += 1
                log.warning("writer of partition %d: fenced, another worker writes it now: %r", partition, result)
            else:
                log.warning("writer of partition %d: append failed: %r", partition, result)
            await self.drop(partition)
            error = Fenced(partition, _explain(self.settings, partition, result), by_another=by_another)
            error.__cause__ = result
            if failed is None or (by_another and not failed.by_another):
                failed = error
        if failed is not None:
            raise failed

    @staticmethod
    async def _commit(producer: Any, records: Sequence[Any]) -> None:
        await producer.begin_transaction()
        try:
            futures = [await producer.send(r.topic, value=r.value, key=r.key, partition=r.partition,
                                           headers=r.headers or None) for r in records]
            await asyncio.gather(*futures)
        except BaseException:
            try:
                await producer.abort_transaction()
            except Exception as exc:  # fenced: the new holder's take-over aborted it already
                log.debug("abort after a failed append: %r", exc)
            raise
        await producer.commit_transaction()


async def _stop(producer: Any) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5.0)
    except Exception as exc:  # a fenced or broken producer: nothing of it is needed any more
        log.debug("stopping a writer's producer: %r", exc)
