"""An in-memory store and a driver that runs the Engine the way the worker does.

After each plan the driver applies ``plan.writes`` to the store (deleting on
``None``), as the worker does once Kafka has acked the plan, and turns the
plan's sends to repartition topics into records for ``engine.plan_derived``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import orjson
from factories import envelope
from support import group_by  # noqa: F401 - the oracle the tests share

from projector.core import index as agg
from projector.core.catalog import Catalog, load_catalog
from projector.core.engine import INDEX, Engine, Plan, Send
from projector.core.partitioning import partition_for
from projector.runtime.stores import MemoryStore

TABLES_DIR = Path(__file__).resolve().parents[2] / "tables"
PARTITIONS = 4
EVENTS = "events"
COMMANDS = "engine-commands"
DEADLETTER = "ev.deadletter"
REPARTITION = {"owners": "r-owners", "currencies": "r-currencies"}


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]


class MemStore(MemoryStore):
    """:class:`projector.runtime.stores.MemoryStore`, with what the tests read of it."""

    def apply(self, plan: Plan) -> None:
        for (table, partition), items in plan.writes.items():
            self.write(table, partition, items, None)

    def state(self) -> dict[tuple[str, int, bytes], bytes]:
        """Everything, for comparing whole stores."""
        return {(t, p, k): v for (t, p), rows in self.data.items() for k, v in rows.items()}

    def table(self, name: str) -> dict[str, Any]:
        """One table's rows over all partitions, keys decoded."""
        out = {}
        for (t, _), rows in self.data.items():
            if t == name:
                for k, v in rows.items():
                    out[k.decode()] = orjson.loads(v)
        return out

    def tables(self) -> set[str]:
        return {t for (t, _), rows in self.data.items() if rows}


class Driver:
    """Feeds records through an Engine and a MemStore, and keeps what the engine sent."""

    def __init__(self, catalog: Optional[Catalog] = None, tables_dir: Path = TABLES_DIR,
                 repartition_topics: Optional[dict[str, str]] = None) -> None:
        self.catalog = catalog if catalog is not None else load_catalog(tables_dir)
        self.store = MemStore()
        self.repartition_topics = repartition_topics if repartition_topics is not None else dict(REPARTITION)
        self.engine = Engine(
            self.catalog,
            self.store,
            partitions=PARTITIONS,
            deadletter_topic=DEADLETTER,
            repartition_topics=self.repartition_topics,
        )
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)
        self.deadletters: list[Send] = []
        self.repartitioned: list[Rec] = []
        self.plans: list[Plan] = []

    # --- records ---------------------------------------------------------------

    def _rec(self, topic: str, key: Optional[bytes], value: Optional[bytes], partition: Optional[int] = None) -> Rec:
        if partition is None:
            partition = partition_for(key, PARTITIONS) if key is not None else 0
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] += 1
        return Rec(topic, partition, offset, key, value)

    def raw(self, key: Optional[bytes], value: Optional[bytes], partition: Optional[int] = None) -> Rec:
        return self._rec(EVENTS, key, value, partition)

    def record(self, envelopes: Any, key: Optional[str] = None) -> Rec:
        """A record of one envelope (dict) or a composite (list of dicts), keyed by the aggregate id."""
        if key is None:
            first = envelopes[0] if isinstance(envelopes, list) else envelopes
            key = first["aggregate_id"]
        return self.raw(key.encode(), orjson.dumps(envelopes))

    def release(self, aggregate_id: str, skip_to: Optional[int] = None) -> Rec:
        return self._rec(COMMANDS, aggregate_id.encode(), orjson.dumps({"action": "release", "skip_to": skip_to}))

    # --- running ------------------------------------------------------------------

    def run(self, records: Sequence[Rec] = (), commands: Sequence[Rec] = (), derived: bool = True) -> Plan:
        plan = self.engine.plan(list(records), list(commands))
        self.plans.append(plan)
        self.store.apply(plan)
        topics = set(self.repartition_topics.values())
        for send in plan.sends:
            if send.topic == DEADLETTER:
                self.deadletters.append(send)
            elif send.topic in topics:
                self.repartitioned.append(self._rec(send.topic, send.key, send.value, send.partition))
            else:
                raise AssertionError(f"unexpected send to {send.topic}")
        if derived:
            self.flush_derived()
        return plan

    def flush_derived(self, batches: Iterable[int] = ()) -> None:
        """Feed the pending repartition records to plan_derived (in batches of the given sizes, then the rest)."""
        pending, self.repartitioned = self.repartitioned, []
        for size in [*batches, len(pending)]:
            chunk, pending = pending[:size], pending[size:]
            if chunk:
                dplan = self.engine.plan_derived(chunk)
                assert not dplan.sends
                self.store.apply(dplan)

    def feed(self, records: Sequence[Rec], batch_size: int = 1) -> None:
        for i in range(0, len(records), batch_size):
            self.run(records[i:i + batch_size])

    # --- reading -------------------------------------------------------------------

    def row(self, table: str, key: str) -> Optional[dict]:
        raw = self.store.get(table, partition_for(key.encode(), PARTITIONS), key.encode())
        return orjson.loads(raw) if raw is not None else None

    def meta(self, aggregate_id: str) -> agg.Meta:
        raw = self.store.get(INDEX, partition_for(aggregate_id.encode(), PARTITIONS), agg.meta_key(aggregate_id))
        return agg.Meta.from_json(orjson.loads(raw) if raw is not None else None)

    def meta_state(self, aggregate_id: str) -> tuple[int, bool]:
        """(last applied version, parked) of an aggregate."""
        m = self.meta(aggregate_id)
        return m.version, m.parked

    def indexed_events(self, aggregate_id: str, from_version: int = 1) -> list[dict]:
        """The stored events, as GET /aggregates/{id}/events reads them."""
        p = partition_for(aggregate_id.encode(), PARTITIONS)
        chunks = self.store.scan(INDEX, p, agg.event_prefix(aggregate_id), start=agg.event_key(aggregate_id, from_version))
        events, _ = agg.stored_events(self.meta(aggregate_id), chunks, from_version, 10**9)
        return events

    def index_view(self, aggregate_id: str) -> tuple[int, bool, list[dict], list[dict]]:
        """What readers get of an aggregate's index entry: version, parked, stored events, parked records."""
        return (*self.meta_state(aggregate_id), self.indexed_events(aggregate_id), self.parked(aggregate_id))

    def parked(self, aggregate_id: str) -> list[dict]:
        p = partition_for(aggregate_id.encode(), PARTITIONS)
        return [orjson.loads(v) for _, v in self.store.scan(INDEX, p, agg.parked_prefix(aggregate_id))]


def headers(send: Send) -> dict[str, str]:
    return {k: v.decode() for k, v in send.headers}


def env(aggregate_id: str, version: int, type: str, data: Optional[dict] = None, **fields: Any) -> dict:
    """An account envelope (empty data unless given)."""
    return envelope(aggregate_id, version, type, data if data is not None else {}, **fields)


def opened(aid: str, owner: str = "alice", currency: str = "EUR") -> dict:
    return env(aid, 1, "AccountOpened", {"owner": owner, "currency": currency})


def deposited(aid: str, version: int, amount: int) -> dict:
    return env(aid, version, "MoneyDeposited", {"amount": amount})


def withdrawn(aid: str, version: int, amount: int) -> dict:
    return env(aid, version, "MoneyWithdrawn", {"amount": amount})


def closed(aid: str, version: int) -> dict:
    return env(aid, version, "AccountClosed", {})


def values(rows: dict[str, dict]) -> dict[str, Any]:
    return {k: r["value"] for k, r in rows.items()}
