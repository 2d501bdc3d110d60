"""The raw-client ceiling for ``projector bench``: a consumer loop and a dict.

This is the least one can do with the events: a plain aiokafka or
confluent-kafka consumer reads the topic from the beginning, decodes every
record with orjson and folds it into a Python dict with the shared fold
(projector/bench/fold.py). There is no Faust, no state store and no changelog,
so nothing is written while it runs; it is the throughput the other
contestants could reach if keeping the state cost nothing.

Its only sign of progress is the group's committed offsets. Auto commit is off;
the consumed positions are committed synchronously every 10,000 records or
every second, and at once when a poll comes back empty, so reaching the end of
the topic is visible at once. A record that is not JSON, or an event that does
not apply, is counted as invalid and skipped.

Run as a subprocess by ``projector bench``::

    python -m projector.bench.raw --client aiokafka --broker kafka://127.0.0.1:9092 \\
        --topic EVENTS --group bench-raw-aiokafka --state-file /tmp/raw.json \\
        --ready-file /tmp/raw.ready

The ready file is written (``time.time()``) when the first record arrives. On
SIGTERM or SIGINT it commits, writes the state file atomically as
``{"rows": {id: {"version", "value"}}, "counts": {"ok", "duplicate",
"invalid"}}`` and exits 0. The two clients share everything but the calls that
consume and commit.

confluent-kafka is the ``bench`` extra, not a dependency of projector: only
``--client confluent`` imports it, and exits with a message that says what to
install when it is missing (:mod:`projector.bench.extras`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any, Iterable, Optional, Protocol

import orjson

from projector.bench.extras import MissingExtra, require
from projector.bench.fold import add_file_arguments, apply, note_first_record, write_state
from projector.runtime.config import Settings
from projector.runtime.errors import ConfigError
from projector.runtime.kafka import client_options, librdkafka_config, settings_for

MIB = 1024 * 1024
BATCH = 10_000  # records per poll, at most
POLL_TIMEOUT = 0.1  # seconds a poll waits when there is nothing to read
COMMIT_EVERY = 10_000  # records
COMMIT_INTERVAL = 1.0  # seconds
START_TIMEOUT = 30.0  # seconds to wait for the topic to exist
METADATA_TIMEOUT = 10.0  # seconds one metadata request may take

#: (key, value) of one record.
Record = tuple[Optional[bytes], Optional[bytes]]


class Fatal(RuntimeError):
    """The contestant cannot run; the message says why."""


class Client(Protocol):
    async def start(self) -> None:
        """Connect; :class:`Fatal` when the broker does not answer."""

    async def topics(self) -> set[str]: ...

    def subscribe(self) -> None: ...

    async def poll(self) -> tuple[Iterable[Record], dict[int, int]]:
        """One batch: its records and the next offset of each partition it read."""

    async def commit(self, positions: dict[int, int]) -> None: ...

    async def close(self) -> None: ...


class AiokafkaClient:
    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self.brokers, self.topic = settings.bootstrap_servers, topic
        self.consumer = AIOKafkaConsumer(
            **client_options(settings), group_id=group, client_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=4 * MIB,
        )

    async def start(self) -> None:
        from aiokafka.errors import KafkaConnectionError

        try:
            await self.consumer.start()
        except KafkaConnectionError as exc:
            raise Fatal(f"cannot reach Kafka at {','.join(self.brokers)}: {exc}") from exc

    async def topics(self) -> set[str]:
        return await self.consumer.topics()

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic])

    async def poll(self) -> tuple[Iterable[Record], dict[int, int]]:
        batch = await self.consumer.getmany(timeout_ms=int(POLL_TIMEOUT * 1000), max_records=BATCH)
        records = ((r.key, r.value) for rs in batch.values() for r in rs)
        return records, {tp.partition: rs[-1].offset + 1 for tp, rs in batch.items() if rs}

    async def commit(self, positions: dict[int, int]) -> None:
        from aiokafka import TopicPartition

        await self.consumer.commit({TopicPartition(self.topic, p): o for p, o in positions.items()})

    async def close(self) -> None:
        await self.consumer.stop()


class ConfluentClient:
    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        require("raw-confluent", "confluent_kafka")
        from confluent_kafka import Consumer

        self.brokers, self.topic = settings.bootstrap_servers, topic
        self.consumer = Consumer({
            **librdkafka_config(settings), "group.id": group, "client.id": group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": 4 * MIB,
            # Once its prefetch queue is full librdkafka waits this long before fetching
            # again; the default (1 s) starves a fast loop to less than half its speed.
            "fetch.queue.backoff.ms": 20,
        })

    async def start(self) -> None:
        await self.topics()

    async def topics(self) -> set[str]:
        from confluent_kafka import KafkaException

        try:
            return set(self.consumer.list_topics(timeout=METADATA_TIMEOUT).topics)
        except KafkaException as exc:
            raise Fatal(f"cannot reach Kafka at {','.join(self.brokers)}: {exc.args[0].str()}") from exc

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic])

    async def poll(self) -> tuple[Iterable[Record], dict[int, int]]:
        records: list[Record] = []
        positions: dict[int, int] = {}
        for m in self.consumer.consume(num_messages=BATCH, timeout=POLL_TIMEOUT):
            if m.error() is not None:
                raise Fatal(f"consuming {self.topic!r}: {m.error().str()}")
            records.append((m.key(), m.value()))
            positions[m.partition()] = m.offset() + 1
        return records, positions

    async def commit(self, positions: dict[int, int]) -> None:
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(self.topic, p, o) for p, o in positions.items()]
        for tp in self.consumer.commit(offsets=offsets, asynchronous=False):
            if tp.error is not None:
                raise Fatal(f"committing {self.topic}[{tp.partition}]: {tp.error.str()}")

    async def close(self) -> None:
        self.consumer.close()


CLIENTS = {"aiokafka": AiokafkaClient, "confluent": ConfluentClient}


class Stop:
    """Set by SIGTERM or SIGINT; the loop looks at it between polls."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True


def fold_records(rows: dict[str, dict[str, Any]], counts: dict[str, int], records: Iterable[Record]) -> int:
    """Fold ``records`` into ``rows``, counting the outcomes; returns how many there were."""
    n = 0
    for key, value in records:
        n += 1
        if key is None:
            counts["invalid"] += 1
            continue
        try:
            counts[apply(rows, key.decode(), orjson.loads(value))] += 1
        except (ValueError, KeyError, TypeError):
            # Not UTF-8, not JSON, or no envelope: apply reads env["version"] unguarded.
            counts["invalid"] += 1
    return n


async def wait_for_topic(client: Client, topic: str, brokers: list[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while topic not in await client.topics():
        if time.monotonic() > deadline:
            raise Fatal(f"topic {topic!r} does not exist on {','.join(brokers)} "
                        f"(waited {START_TIMEOUT:.0f}s)")
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, settings: Settings) -> None:
    stop = Stop()
    brokers = settings.bootstrap_servers
    client: Client = CLIENTS[args.client](settings, args.topic, args.group)
    rows: dict[str, dict[str, Any]] = {}
    counts = {"ok": 0, "duplicate": 0, "invalid": 0}
    uncommitted: dict[int, int] = {}
    since_commit, last_commit = 0, time.monotonic()
    ready = args.ready_file is None
    try:
        await client.start()
        await wait_for_topic(client, args.topic, brokers)
        client.subscribe()
        while not stop.requested:
            records, positions = await client.poll()
            if positions and not ready:
                note_first_record(args.ready_file)
                ready = True
            since_commit += fold_records(rows, counts, records)
            uncommitted.update(positions)
            if uncommitted and (not positions or since_commit >= COMMIT_EVERY
                                or time.monotonic() - last_commit >= COMMIT_INTERVAL):
                await client.commit(uncommitted)
                uncommitted, since_commit, last_commit = {}, 0, time.monotonic()
        if uncommitted:
            await client.commit(uncommitted)
        write_state(args.state_file, rows, counts)
    finally:
        await client.close()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projector.bench.raw", description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", required=True, choices=sorted(CLIENTS))
    parser.add_argument("--broker", required=True, help="[kafka://]host:port[,[kafka://]host:port]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    add_file_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = settings_for(args.broker)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(run(args, settings))
    except (Fatal, MissingExtra) as exc:
        print(f"bench_raw: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
