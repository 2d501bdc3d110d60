"""The command side on the worker: the writer's catch-up gate, and the round trip of ``POST /commands``.

Deciding is pure (:mod:`projector.core.commands`); this module holds what
needs Kafka: whether this worker, as the writer of a partition, has folded
every event the partition held (:class:`WriterGate`), and getting a command
to its writer and the answer back to whoever waits for it
(:class:`CommandRoundTrip`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, Optional, Sequence

from faust.types import TP

from projector.core.commands import Answer, encode_command
from projector.core.partitioning import partition_for
from projector.runtime.fencing import Fenced, WriterFence

log = logging.getLogger(__name__)

#: Sends one record and waits for Kafka: (topic, key, value, partition, timeout) -> RecordMetadata.
Produce = Callable[[str, bytes, bytes, int, float], Awaitable[Any]]
#: Hands answers to the worker at a URL: (url, [{aggregate_id, command_id, status, body}]).
SendAnswers = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


#: How long a writer whose append was fenced leaves the partition alone (seconds). A worker that
#: lost the partition learns it from the rebalance well before; one whose transaction Kafka
#: timed out takes the partition again after it.
LOST_FOR = 20.0


class WriterGate:
    """Per partition of the events topic: may this worker decide its commands yet?

    After an assignment, the writer of a partition decides nothing until it
    has fenced every earlier writer of the partition (:class:`WriterFence`:
    it takes the partition's transactional id) and then folded every event
    the partition held. The end to reach is the partition's last stable
    offset, read after the fence, so it covers everything an earlier writer
    ever committed; this worker's consumer position (the next offset to
    read, past any transaction markers) must reach it. Until then the
    partition's commands wait (:class:`CommandQueue`). A revoke starts every
    partition over. A partition whose append was fenced by another worker
    stays shut (``moved``) until the next rebalance, or for :data:`LOST_FOR` seconds.
    """

    def __init__(self, events_topic: str, fence: WriterFence) -> None:
        self.events_topic = events_topic
        self.fence = fence
        #: The end each partition must be folded to (read after the fence).
        self.targets: dict[int, int] = {}
        #: The partitions caught up on.
        self.open: set[int] = set()
        #: The partitions whose transactional id this worker took since the last rebalance.
        self.taken: set[int] = set()
        #: The partitions another worker writes now (an append was fenced): until the next rebalance, or
        #: until the time given (Kafka also fences a transaction it timed out; then this worker still writes).
        self.lost: dict[int, float] = {}
        #: Why a partition's gate is still shut, when something failed (for the log).
        self.errors: dict[int, str] = {}

    def is_open(self, partition: int) -> bool:
        return partition in self.open

    def moved(self, partition: int) -> bool:
        until = self.lost.get(partition)
        return until is not None and time.monotonic() < until

    def reset(self) -> None:
        self.targets.clear()
        self.open.clear()
        self.taken.clear()
        self.lost.clear()
        self.errors.clear()

    def append_failed(self, partition: int, by_another: bool) -> None:
        """An append of ``partition`` did not commit: fence and catch up again (or stop: another worker writes it)."""
        self.open.discard(partition)
        self.targets.pop(partition, None)
        self.taken.discard(partition)
        if by_another:
            self.lost[partition] = time.monotonic() + LOST_FOR

    async def check(self, partition: int, consumer: Any) -> None:
        """Open the gate of ``partition`` once earlier writers are fenced and every event it held is folded."""
        if partition in self.open or self.moved(partition):
            return
        self.lost.pop(partition, None)
        if partition not in self.taken:  # no end read yet either: it is read after the fence
            try:
                await self.fence.take(partition)
            except Fenced as exc:
                if self.errors.get(partition) != str(exc):
                    log.warning("writer of partition %d: cannot fence earlier writers yet: %s", partition, exc)
                self.errors[partition] = str(exc)
                return
            self.taken.add(partition)
        tp = TP(self.events_topic, partition)
        target = self.targets.get(partition)
        if target is None:
            try:
                target = (await consumer.highwaters(tp)).get(tp)
            except Exception as exc:  # a rebalance under way, or the broker away: try again later
                log.info("writer of partition %d: cannot read the events topic's end yet: %r", partition, exc)
                return
            if target is None:
                return
            self.targets[partition] = target
        try:
            position = await consumer.position(tp)
        except Exception as exc:  # revoked meanwhile, or not sought yet
            log.info("writer of partition %d: no position on the events topic yet: %r", partition, exc)
            return
        if position is not None and position >= target:
            self.open.add(partition)
            self.errors.pop(partition, None)
            log.info("writer of partition %d: caught up with the events topic (offset %d); deciding commands",
                     partition, target)


class CommandQueue:
    """Command records waiting for their partition's gate, in order, at most ``limit`` in all.

    A writer that is catching up keeps the partition's commands here instead
    of answering ``not_ready`` and having them sent again; they are decided,
    first, once the gate opens. Beyond ``limit``, or when the partitions are
    revoked, they are answered ``not_ready`` (the worker that took them sends
    them again, to whichever worker writes the partition then).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.waiting: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.waiting.values())

    def partitions(self) -> set[int]:
        return set(self.waiting)

    def take(self, records: Sequence[Any], gate: WriterGate) -> tuple[list[Any], list[Any]]:
        """(records to decide now, in order; records refused for lack of room), keeping the rest waiting."""
        incoming: dict[int, list[Any]] = defaultdict(list)
        for record in records:
            incoming[record.partition].append(record)
        now: list[Any] = []
        refused: list[Any] = []
        room = self.limit - len(self)
        for partition in sorted(set(incoming) | set(self.waiting)):
            queue = self.waiting.pop(partition, []) + incoming.get(partition, [])
            if gate.is_open(partition) or gate.moved(partition):
                now.extend(queue)
                continue
            kept = incoming.get(partition, [])
            earlier = len(queue) - len(kept)
            fits = max(0, min(len(kept), room))
            room -= fits
            self.waiting[partition] = queue[:earlier + fits]
            refused.extend(kept[fits:])
            if not self.waiting[partition]:
                del self.waiting[partition]
        return now, refused

    def drain(self) -> list[Any]:
        """Every waiting record (a revoke: they are answered ``not_ready``)."""
        waiting, self.waiting = self.waiting, {}
        return [r for records in waiting.values() for r in records]


class CommandRoundTrip:
    """A command from the request that took it, to its partition's writer, and its answer back.

    :meth:`submit` puts the command on the command topic and waits; the
    writer's answers come to :meth:`deliver`, which resolves the local
    waiters and hands the others to the worker that took the command
    (``send_answers``, over HTTP).
    """

    def __init__(self, *, url: str, command_topic: str, partitions: int, produce: Produce,
                 send_answers: Optional[SendAnswers] = None, spawn: Callable[[Awaitable[Any]], Any],
                 is_peer: Optional[Callable[[str], bool]] = None) -> None:
        self.url = url
        self.command_topic = command_topic
        self.partitions = partitions
        self.produce = produce
        self.send_answers = send_answers
        self.spawn = spawn
        #: Whether a URL is a worker of this group: the only places a remote answer goes (None: none is).
        self.is_peer = is_peer
        #: Answers dropped because their ``reply_to`` is no worker of the group.
        self.dropped_answers = 0
        #: Requests waiting for a command's answer, by aggregate id and command id.
        self.waiters: dict[tuple[str, str], set[asyncio.Future]] = {}

    def deliver(self, answers: Sequence[Answer]) -> None:
        """Hand each answer to the request waiting for it: here, or on the worker that took the command."""
        remote: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for answer in answers:
            if answer.reply_to is None or answer.reply_to == self.url:
                self.resolve(answer.aggregate_id, answer.command_id, answer.status, answer.body)
            else:
                remote[answer.reply_to].append({"aggregate_id": answer.aggregate_id, "command_id": answer.command_id,
                                                "status": answer.status, "body": answer.body})
        for url, items in remote.items():
            # reply_to comes from the command record: whoever can write the command topic
            # chooses it. Answer only a worker of this group, at the address it advertises.
            if self.is_peer is None or not self.is_peer(url):
                self.dropped_answers += len(items)
                log.warning("dropped %d command answers for %r: not a worker of this group", len(items), url[:200])
                continue
            self.spawn(self._send(url, items))

    async def _send(self, url: str, items: list[dict[str, Any]]) -> None:
        if self.send_answers is None:
            log.warning("cannot deliver %d command answers to %s: this worker has no web views", len(items), url)
            return
        try:
            await self.send_answers(url, items)
        except Exception as exc:  # that worker is gone: its clients retry with their command ids
            log.warning("could not deliver %d command answers to %s: %r", len(items), url, exc)

    def resolve(self, aggregate_id: str, command_id: str, status: int, body: dict[str, Any]) -> None:
        """Answer the requests waiting for this aggregate's command id (none: the answer is dropped)."""
        for waiter in self.waiters.pop((aggregate_id, command_id), ()):
            if not waiter.done():
                waiter.set_result((status, body))

    async def submit(self, command: dict[str, Any], timeout: float) -> tuple[int, dict[str, Any]]:
        """Put a checked command on the command topic and wait for its writer's answer.

        A writer that is catching up keeps the command until it has caught up;
        it answers ``not_ready`` only when it cannot keep it (too many waiting,
        or it lost the partition), and the command goes out again, after a
        pause that doubles each time, until the deadline. On timeout the
        answer is 504; the command may still be decided, and the same command
        id tells later.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        command_id = command["command_id"]
        slot = (command["aggregate_id"], command_id)
        key = command["aggregate_id"].encode("utf-8")
        partition = partition_for(key, self.partitions)
        value = encode_command(command, self.url)
        pause = 0.05
        while True:
            waiter = loop.create_future()
            self.waiters.setdefault(slot, set()).add(waiter)
            try:
                await self.produce(self.command_topic, key, value, partition, max(0.001, deadline - loop.time()))
                status, body = await asyncio.wait_for(waiter, max(0.001, deadline - loop.time()))
            except asyncio.TimeoutError:
                return 504, {"error": "timeout", "command_id": command_id,
                             "detail": "no answer from the aggregate's writer in time: the outcome is unknown. "
                                       "Send the same command_id again to learn it (it is never applied twice)"}
            finally:
                waiters = self.waiters.get(slot)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self.waiters[slot]
            if status == 503 and body.get("error") == "not_ready" and loop.time() + pause < deadline:
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
                continue
            return status, body
