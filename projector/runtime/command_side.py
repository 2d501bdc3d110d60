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
from collections import defaultdict
from typing import Any, Awaitable, Callable, Iterable, Optional, Sequence

from faust.types import TP

from projector.core.commands import Answer, encode_command
from projector.core.partitioning import partition_for
from projector.runtime.faust_patches import read_offset

log = logging.getLogger(__name__)

#: Sends one record and waits for Kafka: (topic, key, value, partition, timeout) -> RecordMetadata.
Produce = Callable[[str, bytes, bytes, int, float], Awaitable[Any]]
#: Hands answers to the worker at a URL: (url, [{command_id, status, body}]).
SendAnswers = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


class WriterGate:
    """Per partition of the events topic: may this worker decide its commands yet?

    After an assignment, the writer of a partition decides nothing until it
    has folded every event the partition held. The end to reach is taken at
    the first command after the assignment; until the fold gets there,
    commands of the partition are answered ``not_ready`` and sent again by
    the worker that took them. A revoke starts every partition over.
    """

    def __init__(self, events_topic: str) -> None:
        self.events_topic = events_topic
        #: The end each partition must be folded to (set at its first command).
        self.targets: dict[int, int] = {}
        #: The partitions caught up on.
        self.open: set[int] = set()
        #: The last offset folded per partition since the assignment.
        self.folded: dict[int, int] = {}

    def note_folded(self, records: Iterable[Any]) -> None:
        """Records of the events topic this worker has folded (how far each partition is)."""
        folded = self.folded
        for m in records:
            if m.offset > folded.get(m.partition, -1):
                folded[m.partition] = m.offset

    def is_open(self, partition: int) -> bool:
        return partition in self.open

    def reset(self) -> None:
        self.targets.clear()
        self.open.clear()
        self.folded.clear()

    async def check(self, partition: int, consumer: Any) -> None:
        """Open the gate of ``partition`` once it has folded every event the partition held."""
        if partition in self.open:
            return
        tp = TP(self.events_topic, partition)
        target = self.targets.get(partition)
        if target is None:
            try:
                target = (await consumer.highwaters(tp)).get(tp)
            except Exception as exc:  # a rebalance under way, or the broker away: try at the next command
                log.info("writer of partition %d: cannot read the events topic's end yet: %r", partition, exc)
                return
            if target is None:
                return
            self.targets[partition] = target
        folded = self.folded.get(partition)
        if folded is not None:
            next_offset = folded + 1
        else:
            # Nothing delivered since the assignment: Faust's read offset is
            # still where it sought to (the committed offset, the next to read).
            next_offset = read_offset(consumer, tp) or 0
        if next_offset >= target:
            self.open.add(partition)
            log.info("writer of partition %d: caught up with the events topic (offset %d); deciding commands",
                     partition, target)


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
        #: Requests waiting for a command's answer, by command id.
        self.waiters: dict[str, set[asyncio.Future]] = {}

    def deliver(self, answers: Sequence[Answer]) -> None:
        """Hand each answer to the request waiting for it: here, or on the worker that took the command."""
        remote: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for answer in answers:
            if answer.reply_to is None or answer.reply_to == self.url:
                self.resolve(answer.command_id, answer.status, answer.body)
            else:
                remote[answer.reply_to].append(
                    {"command_id": answer.command_id, "status": answer.status, "body": answer.body})
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

    def resolve(self, command_id: str, status: int, body: dict[str, Any]) -> None:
        for waiter in self.waiters.pop(command_id, ()):
            if not waiter.done():
                waiter.set_result((status, body))

    async def submit(self, command: dict[str, Any], timeout: float) -> tuple[int, dict[str, Any]]:
        """Put a checked command on the command topic and wait for its writer's answer.

        A writer that is still catching up answers ``not_ready``: the command
        goes out again until the deadline. On timeout the answer is 504; the
        command may still be decided, and the same command id tells later.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        command_id = command["command_id"]
        key = command["aggregate_id"].encode("utf-8")
        partition = partition_for(key, self.partitions)
        value = encode_command(command, self.url)
        while True:
            waiter = loop.create_future()
            self.waiters.setdefault(command_id, set()).add(waiter)
            try:
                await self.produce(self.command_topic, key, value, partition, max(0.001, deadline - loop.time()))
                status, body = await asyncio.wait_for(waiter, max(0.001, deadline - loop.time()))
            except asyncio.TimeoutError:
                return 504, {"error": "timeout", "command_id": command_id,
                             "detail": "no answer from the aggregate's writer in time: the outcome is unknown. "
                                       "Send the same command_id again to learn it (it is never applied twice)"}
            finally:
                waiters = self.waiters.get(command_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self.waiters[command_id]
            if status == 503 and body.get("error") == "not_ready" and loop.time() + 0.05 < deadline:
                await asyncio.sleep(0.05)
                continue
            return status, body
