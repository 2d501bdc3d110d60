"""``projector verify TABLE``: are the copies of every partition of a table the same?

Every worker answers ``GET /tables/{table}/digest`` for the copies it holds
(active and standby), each at the changelog offset it has applied. verify
asks the worker at PROJECTOR_WEB_HOST:PROJECTOR_WEB_PORT (or ``--url``) for the
workers of its app id (``GET /status?all=1``), asks each of them, and groups
the copies by partition:

- copies at different offsets are still applying the changelog: asked again
  (every half second, until ``--timeout``) until they are at one offset;
- copies at one offset with one digest are **equal**;
- copies at one offset with different digests are asked twice more (a copy
  may be caught between two writes) before they are called **DIFFERENT**.

With ``--rebuild`` it also reads the events topic (read_committed) from its
first record to its end offsets, folds it with the engine into a scratch
in-memory copy (:class:`projector.runtime.stores.MemoryStore`), and compares
each partition's scratch digest with the active copy's, once the group has
committed every record up to those end offsets (and, for a re-keyed table,
every repartition message) and the topic has not moved meanwhile.

Exit status: 0 when every partition is equal (and the scratch copy too, with
``--rebuild``); 1 when any differs; 2 when copies never reached one offset in
time, a partition had no copy, the scratch copy could not be compared, or a
worker could not be asked.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import orjson

from projector.core.digest import digest_rows
from projector.runtime.config import Settings

log = logging.getLogger(__name__)

#: Seconds between two rounds of questions.
PAUSE = 0.5
#: Rounds a partition's copies must disagree at one offset before they are called different.
CONFIRM = 3


class VerifyError(Exception):
    """verify cannot do its job (a worker does not answer, an unknown table): exit 2 with this message."""


@dataclass(frozen=True)
class Copy:
    worker: str
    role: str
    offset: int
    rows: int
    digest: str

    def describe(self, offset: bool = False) -> str:
        at = f" offset={self.offset}" if offset else ""
        return f"{self.worker} {self.role}{at} rows={self.rows} digest={self.digest}"


@dataclass
class Verdict:
    """What verify found for one partition: ``equal``, ``different`` or ``unsettled`` (not compared)."""

    partition: int
    state: str = "unsettled"
    copies: list[Copy] = field(default_factory=list)
    mismatches: int = 0

    def line(self) -> str:
        copies = ", ".join(c.describe() for c in self.copies)
        if self.state == "equal":
            return f"partition {self.partition}: equal at offset {self.copies[0].offset}: {copies}"
        if self.state == "different":
            return f"partition {self.partition}: DIFFERENT at offset {self.copies[0].offset}: {copies}"
        if not self.copies:
            return f"partition {self.partition}: NOT COMPARED: no worker holds a copy"
        copies = ", ".join(c.describe(offset=True) for c in self.copies)
        return f"partition {self.partition}: NOT COMPARED: the copies never were at one offset: {copies}"


# --- asking the workers ------------------------------------------------------------


class Workers:
    """The HTTP side: the workers of the app id and their digests."""

    def __init__(self, url: str, token: Optional[str], timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, base: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(base + path, headers={"Accept": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return e.code, raw.decode("utf-8", "replace")[:200]
        except (OSError, orjson.JSONDecodeError) as exc:
            raise VerifyError(f"the worker at {base} could not be asked ({path}): {exc}") from None

    def group(self) -> tuple[list[str], int]:
        """The URLs of every worker of the app id, and the partition count."""
        status, body = self.get(self.url, "/status?all=1")
        if status != 200 or not isinstance(body, dict):
            raise VerifyError(f"the worker at {self.url} answered /status?all=1 with {status}: {body}")
        urls, partitions = [], 0
        for w in body.get("workers", []):
            if "error" in w:
                raise VerifyError(f"the worker at {w.get('worker')} could not be asked: {w['error']}")
            urls.append(str(w["worker"]).rstrip("/"))
            partitions = max(partitions, int(w.get("partitions_total") or 0))
        if not urls:
            raise VerifyError(f"the worker at {self.url} knows no worker")
        return urls, partitions

    def digests(self, urls: list[str], table: str) -> dict[int, list[Copy]]:
        """Every copy of every partition of ``table`` the workers hold, by partition."""
        out: dict[int, list[Copy]] = {}
        path = f"/tables/{urllib.parse.quote(table, safe='')}/digest"
        for url in urls:
            status, body = self.get(url, path)
            if status == 404:
                raise VerifyError(f"the worker at {url} has no table {table!r}: {body}")
            if status == 503:
                continue  # rebalancing: asked again next round
            if status != 200:
                raise VerifyError(f"the worker at {url} answered {path} with {status}: {body}")
            for p in body["partitions"]:
                copy = Copy(url, p.get("role", "copy"), p["offset"], p["rows"], p["digest"])
                out.setdefault(p["partition"], []).append(copy)
        return out


def compare(ask: Callable[[], dict[int, list[Copy]]], partitions: int, timeout: float,
            sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> list[Verdict]:
    """Ask (``ask``) until every partition's copies are at one offset, or ``timeout`` seconds have passed."""
    deadline = clock() + timeout
    verdicts = {p: Verdict(p) for p in range(partitions)}
    while True:
        got = ask()
        for p in got:
            verdicts.setdefault(p, Verdict(p))
        for p, verdict in verdicts.items():
            if verdict.state != "unsettled":
                continue
            copies = sorted(got.get(p, []), key=lambda c: (c.role != "active", c.worker))
            if not copies:
                continue  # none now (a rebalance): keep what was seen before
            verdict.copies = copies
            if len({c.offset for c in copies}) > 1:
                continue
            if len({c.digest for c in copies}) == 1:
                verdict.state = "equal"
            else:
                verdict.mismatches += 1
                if verdict.mismatches >= CONFIRM:
                    verdict.state = "different"
        if all(v.state != "unsettled" for v in verdicts.values()) or clock() >= deadline:
            return [verdicts[p] for p in sorted(verdicts)]
        sleep(PAUSE)


# --- --rebuild: a scratch copy from the events topic ---------------------------------


@dataclass
class Scratch:
    """The scratch copy: per partition ``(rows, digest)``, and where the events topic ended when it was read."""

    digests: dict[int, tuple[int, str]]
    #: Per partition of the events topic: the end offset read to, and one past its last record (markers aside).
    ends: dict[int, int]
    read_to: dict[int, int]


def _consumer(settings: Settings) -> Any:
    from aiokafka import AIOKafkaConsumer

    from projector.runtime.kafka import client_options

    return AIOKafkaConsumer(**client_options(settings), client_id=f"{settings.app_id}-verify",
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            isolation_level="read_committed", request_timeout_ms=15000)


async def build_scratch(settings: Settings, table: str, timeout: float) -> Scratch:
    """Fold the events topic from its first record to its end offsets into memory; the digest of ``table``."""
    from aiokafka import TopicPartition

    from projector.core.catalog import load_catalog
    from projector.core.engine import Engine
    from projector.core.partitioning import partition_for
    from projector.runtime.control_table import read_control_topic
    from projector.runtime.stores import MemoryStore
    from projector.runtime.topics import existing_topics, repartition_topic_name

    catalog = load_catalog()
    if catalog.get(table) is None:
        raise VerifyError(f"no read model {table!r} in this machine's read-model folder")
    control = await read_control_topic(settings)
    count = (await existing_topics(settings, [settings.events_topic])).get(settings.events_topic)
    if not count:
        raise VerifyError(f"the events topic {settings.events_topic} does not exist")
    parts = list(range(count))
    consumer = _consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.events_topic, p) for p in parts]
        consumer.assign(tps)
        ends = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        await consumer.seek_to_beginning(*tps)
        store = MemoryStore(settings.app_id)
        repartition = {d.name: repartition_topic_name(settings, d.name) for d in catalog.derived}
        engine = Engine(catalog, store, partitions=len(parts), deadletter_topic=settings.deadletter_topic,
                        repartition_topics=repartition, control=control.entries,
                        max_record=settings.max_record_bytes)
        derived_offsets: dict[tuple[str, int], int] = {}
        read_to = {p: 0 for p in parts}
        deadline = time.monotonic() + timeout
        remaining = {tp for tp in tps if ends[tp.partition] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise VerifyError(f"reading {settings.events_topic} to its end took more than {timeout:g} s")
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp.partition]:
                    remaining.discard(tp)
            fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=20_000) if remaining else {}
            records = [r for tp, recs in fetched.items() for r in recs if r.offset < ends[tp.partition]]
            for r in records:
                read_to[r.partition] = max(read_to[r.partition], r.offset + 1)
            if not records:
                continue
            plan = engine.plan(records)
            for (t, p), items in plan.writes.items():
                store.write(t, p, items, None)
            moved = []
            for send in plan.sends:
                if send.topic in repartition.values():
                    partition = send.partition
                    if partition is None:
                        partition = partition_for(send.key, len(parts)) if send.key is not None else 0
                    offset = derived_offsets.get((send.topic, partition), 0)
                    derived_offsets[(send.topic, partition)] = offset + 1
                    moved.append(_Rec(send.topic, partition, offset, send.key, send.value))
            if moved:
                dplan = engine.plan_derived(moved)
                for (t, p), items in dplan.writes.items():
                    store.write(t, p, items, None)
        if getattr(catalog.get(table), "source", None) is not None:
            digests = {p: digest_rows(_group_rows((k, orjson.loads(v)) for k, v in store.scan(table, p, b"")))
                       for p in parts}
        else:
            digests = {p: digest_rows(store.scan(table, p, b"")) for p in parts}
        return Scratch(digests, ends, read_to)
    finally:
        await consumer.stop()


def _group_rows(rows: Any) -> Any:
    """A re-keyed table's rows as ``(key, {"version", "value"})`` in canonical JSON.

    A group's stored row also keeps the offset of the last repartition
    message it took, which a scratch copy cannot reproduce (its messages are
    batched differently): the rebuild compares what the API serves instead.
    Groups without members (value null) are left out, as the listing does.
    """
    for key, row in rows:
        if row.get("value") is not None:
            yield key, orjson.dumps({"version": row["version"], "value": row["value"]}, option=orjson.OPT_SORT_KEYS)


def _listed_group_digests(workers: Workers, table: str, partitions: list[int]) -> dict[int, tuple[int, str]]:
    """The digest of each partition of a re-keyed table as the active copies serve it (``GET /tables/{table}``)."""
    from projector.core.partitioning import partition_for

    by_partition: dict[int, list[tuple[bytes, dict]]] = {p: [] for p in partitions}
    cursor: Optional[str] = None
    while True:
        path = f"/tables/{urllib.parse.quote(table, safe='')}?limit=1000"
        if cursor:
            path += f"&cursor={urllib.parse.quote(cursor, safe='')}"
        status, body = workers.get(workers.url, path)
        if status != 200:
            raise VerifyError(f"the worker at {workers.url} answered {path} with {status}: {body}")
        for row in body["rows"]:
            key = row["key"].encode("utf-8")
            by_partition.setdefault(partition_for(key, len(partitions)), []).append((key, row))
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return {p: digest_rows(_group_rows(rows)) for p, rows in by_partition.items()}


@dataclass
class _Rec:
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]


async def _group_caught_up(settings: Settings, table: str, scratch: Scratch) -> Optional[str]:
    """None once the group has committed every events record the scratch copy read (and, for a re-keyed
    table, every repartition message); else what it still lacks."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from projector.core.catalog import load_catalog
    from projector.runtime.kafka import client_options
    from projector.runtime.topics import repartition_topic_name

    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await admin.close()
    lacking = []
    for p, read_to in scratch.read_to.items():
        meta = committed.get(TopicPartition(settings.events_topic, p))
        if read_to > 0 and (meta is None or meta.offset < read_to):
            lacking.append(f"{settings.events_topic}/{p} committed {meta.offset if meta else None} < {read_to}")
    model = load_catalog().get(table)
    if getattr(model, "source", None) is not None:  # a re-keyed table: its repartition messages too
        topic = repartition_topic_name(settings, table)
        consumer = _consumer(settings)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in scratch.read_to]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        for tp, end in ends.items():
            meta = committed.get(tp)
            if end > 0 and (meta is None or meta.offset < end):
                lacking.append(f"{topic}/{tp.partition} committed {meta.offset if meta else None} < {end}")
    return "; ".join(lacking) or None


async def _events_end(settings: Settings, partitions: list[int]) -> dict[int, int]:
    from aiokafka import TopicPartition

    consumer = _consumer(settings)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(settings.events_topic, p) for p in partitions])
        return {tp.partition: o for tp, o in ends.items()}
    finally:
        await consumer.stop()


def compare_rebuild(settings: Settings, workers: Workers, urls: list[str], table: str, timeout: float,
                    out: Callable[[str], None]) -> int:
    """Build the scratch copy, wait for the active copies to fold as far, compare; 0 equal, 1 different, 2 not compared."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    status, body = workers.get(urls[0], "/tables")
    listed = {t.get("name"): t for t in body.get("tables", [])} if status == 200 and isinstance(body, dict) else {}
    building = (listed.get(table) or {}).get("building")
    if building:
        out(f"rebuild: NOT COMPARED: version {building.get('version')} of {table} is being built beside the live "
            f"version {listed[table].get('version')}; compare once it has switched")
        return 2
    try:
        scratch = asyncio.run(build_scratch(settings, table, max(timeout, 60.0)))
    except VerifyError:
        raise
    except Exception as exc:  # the broker, the topic: said as one line
        raise VerifyError(f"cannot read {settings.events_topic} at {settings.broker}: {exc}") from None
    ends = ", ".join(f"{p}:{o}" for p, o in sorted(scratch.ends.items()))
    out(f"rebuild: folded {settings.events_topic} to its end offsets ({ends}) into a scratch copy of {table}")
    deadline = time.monotonic() + timeout
    lacking: Optional[str] = "not asked yet"
    while True:
        lacking = asyncio.run(_group_caught_up(settings, table, scratch))
        if lacking is None or time.monotonic() >= deadline:
            break
        time.sleep(PAUSE)
    if lacking is not None:
        out(f"rebuild: NOT COMPARED: the workers had not folded as far within the timeout ({lacking})")
        return 2
    from projector.core.catalog import load_catalog

    rekeyed = getattr(load_catalog().get(table), "source", None) is not None
    got = workers.digests(urls, table)
    listed = _listed_group_digests(workers, table, sorted(scratch.digests)) if rekeyed else {}
    now = asyncio.run(_events_end(settings, sorted(scratch.ends)))
    moved = {p: now[p] - scratch.ends[p] for p in now if now[p] != scratch.ends[p]}
    if moved:
        out(f"rebuild: NOT COMPARED: {settings.events_topic} moved while verifying "
            f"(partition: new offsets {moved}); run it when the topic is quiet")
        return 2
    status = 0
    if rekeyed:
        out(f"rebuild: {table} is re-keyed: compared as served (key, version, value), without the repartition "
            "offsets its rows keep")
        for p, (rows, digest) in sorted(scratch.digests.items()):
            same = listed.get(p) == (rows, digest)
            status = status if same else 1
            got_rows, got_digest = listed.get(p, (0, "-"))
            out(f"partition {p}: rebuild {'equal' if same else 'DIFFERENT'}: scratch rows={rows} digest={digest}, "
                f"served rows={got_rows} digest={got_digest}")
        return status
    for p, (rows, digest) in sorted(scratch.digests.items()):
        actives = [c for c in got.get(p, []) if c.role == "active"]
        if not actives:
            out(f"partition {p}: rebuild NOT COMPARED: no active copy found")
            status = status or 2
            continue
        active = actives[0]
        same = active.digest == digest
        word = "equal" if same else "DIFFERENT"
        out(f"partition {p}: rebuild {word}: scratch rows={rows} digest={digest}, active {active.describe(offset=True)}")
        if not same:
            status = 1
    return status


# --- the command ---------------------------------------------------------------------


def verify(settings: Settings, table: str, url: Optional[str] = None, timeout: float = 30.0,
           rebuild: bool = False, out: Callable[[str], None] = print) -> int:
    """Run ``projector verify``; returns its exit status."""
    workers = Workers(url or settings.url, settings.api_token or settings.admin_token)
    try:
        urls, partitions = workers.group()
        out(f"{table}: {len(urls)} worker(s): {', '.join(urls)}")
        verdicts = compare(lambda: workers.digests(urls, table), partitions, timeout)
        for v in verdicts:
            out(v.line())
        states = {v.state for v in verdicts}
        status = 1 if "different" in states else 2 if "unsettled" in states else 0
        if rebuild:
            built = compare_rebuild(settings, workers, urls, table, timeout, out)
            status = 1 if 1 in (status, built) else max(status, built)
    except VerifyError as exc:
        out(f"projector verify: {exc}")
        return 2
    summary = {0: "every partition is equal", 1: "some partition DIFFERS", 2: "some partition was not compared"}
    out(f"{table}: {summary[status]}")
    return status


def main(settings: Settings, args: Any) -> None:
    sys.exit(verify(settings, args.table, args.url, args.timeout, args.rebuild))
