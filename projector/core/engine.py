"""The projection engine: batches of records in, a plan of writes and sends out.

The engine is pure apart from reading current rows through :class:`Store`:
it never talks to Kafka. For a batch it returns a :class:`Plan`:

- ``writes``: the new value (or ``None``: delete) of every touched key, per
  table and partition. Each key is written once per batch, so the changelog
  gets one record per key per batch, not one per event.
- ``sends``: dead letters and repartition messages.

The worker sends the changelog records and ``sends``, waits until Kafka has
them all, and only then writes RocksDB (see :mod:`projector.runtime.sink`). A crash at
any point therefore leaves the changelog at or ahead of local state, and the
source offsets uncommitted: the batch is replayed, and the version kept in
every row turns the replay into duplicates.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Iterable, Iterator, Mapping, Optional, Protocol, Sequence

import orjson

from projector.core import index as agg
from projector.core.catalog import Catalog, DerivedModel, ReadModel
from projector.core.derived import Contribution, apply_change, change_messages, contribution_of, member_key
from projector.core.envelope import Event, decode_record
from projector.core.errors import InvalidRecord
from projector.core.fold import FOLD_ERROR, NO_CONTROL, fold_events
from projector.core.indexes import BadIndexValue, index_signature, index_table, update_index
from projector.core.lifecycle import BUILDS
from projector.core.metrics import Metrics
from projector.core.partitioning import partition_for
from projector.core.schemas import Schemas

log = logging.getLogger(__name__)

INDEX = "_index"
#: The command side's answers, by command id: what a retry of the same command id gets.
COMMANDS = "_commands"

HEADER_REASON = "projector.reason"
HEADER_ERROR = "projector.error"
HEADER_SOURCE = "projector.source"
#: On a dead letter whose value was left out (too large to send): the value's size in bytes.
HEADER_TRUNCATED = "projector.truncated"

#: Dead-letter reason of a record too large to keep: an event whose index segment
#: (or a parked record whose events) would exceed :data:`MAX_RECORD_BYTES`.
TOO_LARGE = "too_large"

#: The most bytes (key, value and headers together) of one record projector writes:
#: a changelog record, a repartition message or a dead letter. Kafka's defaults
#: take 1 MiB per record batch (the broker's ``message.max.bytes``, a topic's
#: ``max.message.bytes``) and the producer 1,000,000 bytes per request
#: (``max_request_size``, Faust's default); this leaves 40 KB of that for the
#: record and batch framing. A worker lowers it at start when a topic it writes
#: takes less (:func:`projector.runtime.topics.record_limit`).
MAX_RECORD_BYTES = 960_000
#: The longest ``projector.error`` header of a dead letter (characters); longer texts are cut.
MAX_ERROR_CHARS = 4000


def members_table(model: DerivedModel) -> str:
    return f"_{model.name}_members"


def tables_of(catalog: Catalog, states: Optional[Mapping[str, Any]] = None) -> list[tuple[str, str]]:
    """Every table a worker keeps for ``catalog``, with its description: the read models and projector's own.

    ``states`` (:func:`projector.core.lifecycle.plan_tables`): each read model's
    live version and the one being built, each in its own table (and its own
    index table); without it, each read model's own version is live.
    """
    out = []
    for m in catalog.models:
        state = states.get(m.name) if states else None
        tables = [(m.table, m.description)]
        if state is not None:
            tables = [(state.live_table, m.description)] if state.live_table is not None else []
            if state.build_table is not None:
                tables.append((state.build_table, f"{m.description} (version {m.version}, building)"))
        for table, description in tables:
            out.append((table, description))
            if m.indexes:
                out.append((index_table(table), f"secondary indexes of {table}: {', '.join(m.indexes)}"))
    out += [
        (INDEX, "projector's aggregate index: versions, events and parked records per aggregate"),
        (COMMANDS, "the command side's answers by command id, for retries"),
        (BUILDS, "how far each new read-model version has been built from history, per partition"),
    ]
    for d in catalog.derived:
        out += [(d.name, d.description), (members_table(d), f"members of {d.name} and their last contributions")]
    return out


class Store(Protocol):
    """Read access to the current (committed) rows."""

    def get(self, table: str, partition: int, key: bytes) -> Optional[bytes]: ...

    def scan(
        self, table: str, partition: int, prefix: bytes, start: Optional[bytes] = None
    ) -> Iterator[tuple[bytes, bytes]]: ...


class Record(Protocol):
    """What the engine needs of a consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]


@dataclass
class Send:
    topic: str
    partition: Optional[int]
    key: Optional[bytes]
    value: Optional[bytes]
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Plan:
    writes: dict[tuple[str, int], dict[bytes, Optional[bytes]]] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)
    #: Event records the command side appends to the events topic: in Kafka before anything else.
    appends: list[Send] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.writes or self.sends or self.appends)


def command_id_of(events: Sequence[Event]) -> Optional[str]:
    """The id of the command that decided these events (``metadata.command_id``), if any."""
    command_id = events[0].metadata.get("command_id") if events and events[0].metadata else None
    return command_id if isinstance(command_id, str) and command_id else None


#: Rows of the ``_commands`` table: an answer by aggregate and command id, and the same by the time it was stored.
ANSWER_PREFIX = b"a\0"
ANSWER_TIME_PREFIX = b"t\0"


def answer_key(aggregate_id: str, command_id: str) -> bytes:
    """The ``_commands`` row of a command id, scoped by its aggregate: ids of different aggregates never meet."""
    return ANSWER_PREFIX + aggregate_id.encode("utf-8") + b"\0" + command_id.encode("utf-8")


def answer_time_key(at: int, aggregate_id: str, command_id: str) -> bytes:
    """The time index of an answer: keys in the order answers were stored, for pruning by age."""
    return ANSWER_TIME_PREFIX + b"%012d\0" % max(0, at) + aggregate_id.encode("utf-8") + b"\0" + command_id.encode("utf-8")


def get_answer(batch: "Batch", partition: int, aggregate_id: str, command_id: str) -> Optional[dict[str, Any]]:
    """The stored answer ``{status, body, at}`` of this aggregate's command id, or None.

    Rows from before answers were scoped by aggregate (keyed by the command
    id alone) still count, when their answer names this aggregate.
    """
    stored = batch.get_json(COMMANDS, partition, answer_key(aggregate_id, command_id))
    if stored is not None:
        return stored
    legacy = batch.get_json(COMMANDS, partition, command_id.encode("utf-8"))
    if isinstance(legacy, dict) and isinstance(legacy.get("body"), dict) and (
            legacy["body"].get("aggregate_id") == aggregate_id):
        return legacy
    return None


def put_answer(batch: "Batch", partition: int, aggregate_id: str, command_id: str,
               status: int, body: dict[str, Any], at: int) -> None:
    """Store a command's answer, and its entry in the time index (``at``: seconds since the epoch)."""
    key = answer_key(aggregate_id, command_id)
    previous = batch.get_json(COMMANDS, partition, key)
    if isinstance(previous, dict) and isinstance(previous.get("at"), int) and previous["at"] != at:
        batch.put(COMMANDS, partition, answer_time_key(previous["at"], aggregate_id, command_id), None)
    batch.put_json(COMMANDS, partition, key, {"status": status, "body": body, "at": at})
    batch.put(COMMANDS, partition, answer_time_key(at, aggregate_id, command_id), b"1")


def expired_answers(batch: "Batch", partition: int, before: int, limit: int) -> list[bytes]:
    """Keys of the answers stored before ``before`` (and of their time index entries), at most ``limit`` answers."""
    keys = []
    for key, _ in batch.store.scan(COMMANDS, partition, ANSWER_TIME_PREFIX):
        at, _, rest = key[len(ANSWER_TIME_PREFIX):].partition(b"\0")
        if not at.isdigit() or int(at) >= before or len(keys) >= 2 * limit:
            break
        keys.append(key)
        keys.append(ANSWER_PREFIX + rest)
    return keys


def rfc3339_seconds(timestamp: Optional[str]) -> int:
    """Seconds since the epoch of an RFC 3339 timestamp; 0 when there is none or it does not parse."""
    if not timestamp:
        return 0
    try:
        return int(datetime.datetime.fromisoformat(timestamp).timestamp())
    except (TypeError, ValueError):
        return 0


def accepted_answer(command_id: str, aggregate_id: str, envelopes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stored answer (status and body) of an accepted command, from the events it appended."""
    return {
        "status": 200,
        "body": {
            "command_id": command_id,
            "aggregate_id": aggregate_id,
            "version": envelopes[-1]["version"],
            "events": list(envelopes),
        },
    }


class Batch:
    """Reads through the pending writes of this batch, then the store.

    Rows written as JSON stay Python objects until :meth:`finish` encodes
    each of them once, however often the batch reads and rewrites them.
    """

    def __init__(self, store: Store, max_record: Optional[int] = None) -> None:
        self.store = store
        self.plan = Plan()
        #: Rows encoded by :meth:`finish_steps` over ``max_record`` bytes (with their key): (table, partition, key).
        self.max_record = max_record
        self.oversize: list[tuple[str, int, bytes]] = []
        #: Aggregates (partition, id) whose rows are checked against the record limit after each record.
        self.checked: set[tuple[int, str]] = set()
        self.objects: dict[tuple[str, int], dict[bytes, Any]] = {}
        #: Source rows whose derived contributions changed in this batch, by (partition, aggregate id).
        self.touched: dict[tuple[int, str], Touched] = {}

    def _pending(self, table: str, partition: int, key: bytes) -> tuple[bool, Any, bool]:
        """(found, value, is_object) among this batch's writes."""
        objects = self.objects.get((table, partition))
        if objects is not None and key in objects:
            return True, objects[key], True
        raw = self.plan.writes.get((table, partition))
        if raw is not None and key in raw:
            return True, raw[key], False
        return False, None, False

    def get_json(self, table: str, partition: int, key: bytes) -> Any:
        found, value, is_object = self._pending(table, partition, key)
        if found and is_object:
            return value
        raw = value if found else self.store.get(table, partition, key)
        return orjson.loads(raw) if raw is not None else None

    def put(self, table: str, partition: int, key: bytes, value: Optional[bytes]) -> None:
        self.objects.get((table, partition), {}).pop(key, None)
        self.plan.writes.setdefault((table, partition), {})[key] = value

    def put_json(self, table: str, partition: int, key: bytes, value: Any) -> None:
        self.plan.writes.get((table, partition), {}).pop(key, None)
        self.objects.setdefault((table, partition), {})[key] = value

    def scan(self, table: str, partition: int, prefix: bytes) -> list[tuple[bytes, bytes]]:
        found = dict(self.store.scan(table, partition, prefix))
        slot = (table, partition)
        pending = dict(self.plan.writes.get(slot, {}))
        pending.update({k: orjson.dumps(v) for k, v in self.objects.get(slot, {}).items()})
        for key, value in pending.items():
            if key.startswith(prefix):
                if value is None:
                    found.pop(key, None)
                else:
                    found[key] = value
        return sorted(found.items())

    def finish(self) -> Plan:
        return run_steps(self.finish_steps())

    def finish_steps(self, every: int = 64) -> Generator[None, None, Plan]:
        """Encode every row kept as an object, yielding every ``every`` rows; returns the plan."""
        dumps = orjson.dumps
        limit = self.max_record
        n = 0
        for slot, objects in self.objects.items():
            writes = self.plan.writes.setdefault(slot, {})
            for key, value in objects.items():
                writes[key] = raw = dumps(value)
                if limit is not None and len(raw) + len(key) > limit:
                    self.oversize.append((slot[0], slot[1], key))
                n += 1
                if n % every == 0:
                    yield
        self.objects = {}
        return self.plan


def run_steps(steps: Generator[None, None, Any]) -> Any:
    """Run a generator of steps to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class Pending:
    """A decoded record waiting to be folded with the rest of its aggregate's."""

    __slots__ = ("originals", "events", "key", "value", "_source", "size")

    def __init__(self, originals: list[Event], events: list[Event], key: Optional[bytes],
                 value: Optional[bytes], source: Any, size: Optional[int] = None) -> None:
        self.originals = originals
        self.events = events
        self.key = key
        self.value = value
        self._source = source  # "topic/partition/offset", or the record to make it from when needed
        #: The original value's size when ``value`` was not kept (a parked record too large to keep it).
        self.size = size

    @property
    def source(self) -> str:
        s = self._source
        return s if isinstance(s, str) else f"{s.topic}/{s.partition}/{s.offset}"


@dataclass
class Touched:
    """A source row's derived contributions at the start of the batch, and now."""

    old: dict[str, Contribution]
    new: dict[str, Contribution]
    version: int


class Engine:
    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        *,
        partitions: int,
        deadletter_topic: str,
        repartition_topics: dict[str, str],
        metrics: Optional[Metrics] = None,
        schemas: Optional[Schemas] = None,
        control: Mapping[str, Any] = NO_CONTROL,
        max_record: int = MAX_RECORD_BYTES,
    ) -> None:
        self.models = list(catalog.models)
        #: The most bytes of one record this engine plans (key, value, headers): see :data:`MAX_RECORD_BYTES`.
        self.max_record = max_record
        #: Read-only view of the control table, for folds that take it.
        self.control = control
        self.derived = list(catalog.derived)
        self.model_names = {m.name for m in self.models}
        #: Read models with secondary indexes (INDEXES), by name: see :mod:`projector.core.indexes`.
        self.indexed = {m.name: m for m in self.models if m.indexes}
        self.store = store
        self.partitions = partitions
        self.deadletter_topic = deadletter_topic
        self.repartition_topics = repartition_topics
        self.metrics = metrics or Metrics()
        self.schemas = schemas or Schemas.from_modules(catalog.modules)
        self.derived_by_source: dict[str, list[DerivedModel]] = {}
        for d in self.derived:
            self.derived_by_source.setdefault(d.source, []).append(d)
        self.derived_by_topic = {repartition_topics[d.name]: d for d in self.derived}
        #: Tables that say what has been applied (the aggregate index for the
        #: read models, the members tables for the re-keyed ones). Their records
        #: must reach Kafka only after the rows they vouch for: a crash between
        #: the two then leaves rows ahead of their guard (a replay skips them as
        #: duplicates), never a guard ahead of its rows (a replay would skip
        #: events the rows never got).
        self.guard_tables = {INDEX, COMMANDS, BUILDS, *(members_table(d) for d in self.derived)}
        #: Versions being built beside the live ones (:mod:`projector.core.lifecycle`), by events partition: once
        #: a partition's build has caught up, the live fold writes the new version's table too, until the switch.
        self.shadow: dict[int, list[ReadModel]] = {}

    # --- events ------------------------------------------------------------------

    def plan(self, records: Iterable[Record], commands: Iterable[Record] = ()) -> Plan:
        """Plan a batch of event records, then any engine commands (releases).

        Records are decoded, then grouped by aggregate (keeping their order):
        each aggregate's index entry and rows are read once, folded in memory
        through all its records, and written once.
        """
        return run_steps(self.plan_steps(records, commands))

    def plan_steps(
        self, records: Iterable[Record], commands: Iterable[Record] = (), every: int = 32
    ) -> Generator[None, None, Plan]:
        """:meth:`plan` in steps: yields after about ``every`` records, aggregates or rows; returns the Plan.

        Each step is short (well under a millisecond), so the worker can give
        its event loop back whenever a time slice is used up: a large batch
        does not hold up HTTP requests for the whole time it takes to fold.
        """
        records, commands = list(records), list(commands)
        snapshot = self.metrics.snapshot()
        checked: set[tuple[int, str]] = set()
        while True:
            batch = Batch(self.store, self.max_record)
            batch.checked = checked
            plan = yield from self._plan_batch(batch, records, commands, every)
            models = self.model_names
            over = {(p, key.decode("utf-8")) for table, p, key in batch.oversize if table in models}
            if not over - checked:
                return plan
            # A read model's row grew over the record limit: plan the batch again,
            # checking those aggregates' rows after each record (rare, so the
            # common path never encodes a row twice).
            log.warning("rows of %d aggregate(s) over %d bytes: planning the batch again, record by record for them",
                        len(over - checked), self.max_record)
            checked |= over
            self.metrics.restore(snapshot)

    def _plan_batch(
        self, batch: Batch, records: list[Record], commands: list[Record], every: int
    ) -> Generator[None, None, Plan]:
        groups: dict[tuple[int, str], list[Pending]] = {}
        upcast_all = self.schemas.upcast_all
        n = 0
        for record in records:
            n += 1
            if n % every == 0:
                yield
            self.metrics.records_seen += 1
            try:
                originals = decode_record(record.key, record.value)
                events = upcast_all(originals)
            except InvalidRecord as exc:
                source = f"{record.topic}/{record.partition}/{record.offset}"
                self._deadletter(batch, record.key, record.value, exc.reason, exc.message, source)
                continue
            pending = Pending(originals, events, record.key, record.value, record)
            slot = (record.partition, events[0].aggregate_id)
            group = groups.get(slot)
            if group is None:
                groups[slot] = [pending]
            else:
                group.append(pending)
        n = 0
        for (partition, aid), pendings in groups.items():
            n += len(pendings)
            if n >= every:
                n = 0
                yield
            meta = agg.Meta.from_json(batch.get_json(INDEX, partition, agg.meta_key(aid)))
            self.fold(batch, partition, aid, meta, pendings)
        for record in commands:
            self._command_record(batch, record)
            yield
        self.metrics.batches += 1
        return (yield from self.finish_steps(batch, every))

    def begin(self) -> "Batch":
        """A new batch over this engine's store: fold into it, then :meth:`finish_steps` it into a plan."""
        return Batch(self.store)

    def finish_steps(self, batch: "Batch", every: int = 32) -> Generator[None, None, Plan]:
        """The derived models' messages for what the batch changed, then every row encoded; returns the plan."""
        yield from self._emit_derived(batch, every)
        return (yield from batch.finish_steps(every * 2))

    def fold(
        self,
        batch: Batch,
        partition: int,
        aid: str,
        meta: agg.Meta,
        pendings: Sequence[Pending],
        replay: bool = False,
    ) -> None:
        """Apply one aggregate's records in order to its index entry and rows, then write them once.

        Each record is applied all or nothing: a rejected one leaves the
        aggregate as the records before it left it.
        """
        key = aid.encode("utf-8")
        meta_key = agg.meta_key(aid)
        models = self.models
        shadow = self.shadow.get(partition) if self.shadow else None
        if shadow:
            models = models + shadow
        rows = {m.name: batch.get_json(m.name, partition, key) for m in models}
        first_rows = dict(rows)
        changed: set[str] = set()
        meta_changed = replay  # a release has changed the entry already
        derived_check = self.derived_by_source
        control = self.control
        applied_counts = dict.fromkeys(rows, 0)
        #: The contribution of each re-keyed model for the source row as it now stands (validated).
        latest: dict[str, Contribution] = {}
        #: The index values of each indexed row as it now stands (validated).
        signatures: dict[str, tuple] = {}
        encoded: list[tuple[int, bytes]] = []  # the applied events, for the index's new segment
        dumps = orjson.dumps
        checked = bool(batch.checked) and (partition, aid) in batch.checked
        #: The largest event that fits in an index segment of its own.
        event_budget = self.max_record - len(meta_key) - 14
        for p in pendings:
            events = p.events
            if not meta.parked and events[0].version == meta.version + 1:
                fresh, fresh_originals = events, p.originals  # the common case: next in line, no duplicates
            else:
                admission = agg.admit(meta, events)
                self.metrics.duplicates += admission.duplicates
                if admission.duplicates and command_id_of(p.originals) is not None:
                    # The command side applied these when it appended them: this is their echo.
                    self.metrics.command_echoes += admission.duplicates
                outcome = admission.outcome
                if outcome == agg.DUPLICATE:
                    continue
                fresh = admission.events
                fresh_originals = p.originals if len(fresh) == len(p.originals) else p.originals[-len(fresh):]
                if outcome != agg.APPLY:
                    self._park(batch, partition, aid, meta, admission, fresh_originals, p, replay)
                    meta_changed = True
                    continue
            envelopes = [e.to_dict() for e in fresh_originals]
            raws = [dumps(e) for e in envelopes]
            largest = len(raws[0]) if len(raws) == 1 else max(map(len, raws))
            if largest > event_budget:
                # Its index segment could not be written: not applied, like a
                # fold that raises (the aggregate's next event is a version gap).
                at = (f"version {fresh[0].version}" if len(fresh) == 1
                      else f"versions {fresh[0].version}-{fresh[-1].version}")
                self._deadletter(batch, p.key, p.value, TOO_LARGE,
                                 f"aggregate {aid}: an event of {largest} bytes (record at {at}) is over the "
                                 f"{self.max_record} bytes a record may take; not applied (the aggregate stays at "
                                 f"version {meta.version})", p.source, p.size)
                continue
            updates = []
            contributions = []
            new_signatures = []
            try:
                for model in models:
                    name = model.name
                    result = fold_events(model, rows[name], fresh, control)
                    if result is None:
                        continue
                    updates.append((name, result))
                    if model.indexes:
                        try:
                            new_signatures.append((name, index_signature(model, result[0]["value"])))
                        except BadIndexValue as exc:
                            raise InvalidRecord(FOLD_ERROR, f"{exc} (the row of {aid})") from exc
                    for d in derived_check.get(name, ()):
                        try:
                            contributions.append((d.name, contribution_of(d, result[0]["value"])))
                        except Exception as exc:
                            raise InvalidRecord(
                                FOLD_ERROR, f"{d.name}: key/contribution of {aid} raised {type(exc).__name__}: {exc}"
                            ) from exc
                if checked:
                    for name, (row, _) in updates:
                        size = len(dumps(row)) + len(key)
                        if size > self.max_record:
                            raise InvalidRecord(
                                TOO_LARGE, f"{name}: the row of {aid} at version {fresh[-1].version} would take "
                                f"{size} bytes, over the {self.max_record} bytes a record may take; not applied "
                                f"(the aggregate stays at version {meta.version})")
            except InvalidRecord as exc:
                self._deadletter(batch, p.key, p.value, exc.reason, exc.message, p.source, p.size)
                continue
            for name, (row, applied) in updates:
                rows[name] = row
                changed.add(name)
                applied_counts[name] += applied
            for dname, contribution in contributions:
                latest[dname] = contribution
            signatures.update(new_signatures)
            encoded.extend([(e["version"], raw) for e, raw in zip(envelopes, raws)])
            meta.version = envelopes[-1]["version"]
            meta_changed = True
            command_id = command_id_of(p.originals)
            if command_id is not None:
                # The answer to the command that decided these events, kept with
                # them: whoever folds them (the writer as it appends them, or any
                # worker replaying the topic after a crash) records the same one.
                answer = accepted_answer(command_id, aid, envelopes)
                if sum(len(raw) + 1 for raw in raws) + 2 * len(command_id) + len(aid) + 256 > self.max_record:
                    # Too large to keep whole: a retry gets the answer without the
                    # events (they are in the index, from the answer's version back).
                    answer["body"]["events"] = []
                put_answer(batch, partition, aid, command_id, answer["status"], answer["body"],
                           rfc3339_seconds(envelopes[-1].get("timestamp")) or int(time.time()))
        applied_total = self.metrics.events_applied
        for name, n in applied_counts.items():
            if n:
                applied_total[name] += n
        if meta_changed:
            if encoded:
                for last, segment in meta.segments(encoded, self.max_record - len(meta_key) - 16):
                    batch.put(INDEX, partition, agg.event_key(aid, last), segment)
            batch.put_json(INDEX, partition, meta_key, meta.to_json())
        for name in changed:
            batch.put_json(name, partition, key, rows[name])
            if name in signatures:
                before = first_rows[name]
                indexed = self.indexed.get(name) or next(m for m in models if m.name == name)
                update_index(batch, name, partition, key, indexed, before["value"] if before else None,
                             rows[name]["value"], new_signature=signatures[name])
            for d in derived_check.get(name, ()):
                t = batch.touched.get((partition, aid))
                if t is None:
                    t = batch.touched[(partition, aid)] = Touched({}, {}, 0)
                if d.name not in t.old:
                    before = first_rows[name]
                    try:
                        t.old[d.name] = contribution_of(d, before["value"] if before else None)
                    except Exception:  # a row that was stored once must not block its own updates
                        log.exception("%s: contribution of the stored row of %s raised", d.name, aid)
                        t.old[d.name] = None
                t.new[d.name] = latest[d.name]  # validated when the row's last record was applied
                t.version = rows[name]["version"]

    def _park(
        self,
        batch: Batch,
        partition: int,
        aid: str,
        meta: agg.Meta,
        admission: agg.Admission,
        fresh_originals: Sequence[Event],
        p: "Pending",
        replay: bool,
    ) -> None:
        """Keep a record of a parked aggregate (parking it first on a gap), and dead-letter it."""
        if admission.outcome == agg.GAP:
            meta.parked = True
            self.metrics.parked_aggregates += 1
            error = (
                f"aggregate {aid}: expected version {meta.version + 1}, got {admission.events[0].version}; "
                f"the aggregate is parked until an operator releases it"
            )
        else:
            error = f"aggregate {aid} is parked at version {meta.version}; release it to apply its later events"
        key = agg.parked_key(aid, admission.events[0].version, admission.events[-1].version)
        entry = {
            "source": p.source,
            "events": [e.to_dict() for e in fresh_originals],
            "key": p.key.decode("utf-8", "surrogateescape") if p.key is not None else None,
            "value": p.value.decode("utf-8", "surrogateescape") if p.value is not None else None,
        }
        if p.size is not None:
            entry["size"] = p.size
        stored = orjson.dumps(entry)
        reason = admission.outcome
        if len(key) + len(stored) > self.max_record and p.value is not None:
            # The events and the original value again: keep the events, and the
            # value's size (a dead letter of it on release refers to its source).
            entry["value"] = None
            entry["size"] = len(p.value)
            stored = orjson.dumps(entry)
        if len(key) + len(stored) > self.max_record:
            # Even its events are too large to keep for a release: dead-lettered by
            # reference, and a release must skip past it (skip_to).
            reason = TOO_LARGE
            error += (f"; this record ({len(stored)} bytes as a parked record) is over the {self.max_record} bytes "
                      f"a record may take and is not kept: release with skip_to={admission.events[-1].version + 1} "
                      f"to go on after it")
        else:
            batch.put(INDEX, partition, key, stored)
        if not replay or reason == TOO_LARGE:  # a release re-parks what was dead-lettered when it was parked
            self._deadletter(batch, p.key, p.value, reason, error, p.source, p.size)

    def _emit_derived(
        self, batch: Batch, every: int = 32
    ) -> Generator[None, None, None]:
        """One repartition message per re-keyed model and group per batch, listing its members' changes."""
        by_group: dict[tuple[str, str], list[dict]] = {}
        n = 0
        for (_, aid), t in batch.touched.items():
            n += 1
            if n % every == 0:
                yield
            for name, new in t.new.items():
                for group, change in change_messages(t.old.get(name), new, aid, t.version):
                    by_group.setdefault((name, group), []).append(change)
        dumps = orjson.dumps
        for (name, group), changes in by_group.items():
            n += 1
            if n % every == 0:
                yield
            gkey = group.encode("utf-8")
            topic, partition = self.repartition_topics[name], partition_for(gkey, self.partitions)
            # As many messages as it takes to keep each under the record limit:
            # each is applied on its own, in order (plan_derived_steps).
            value = dumps({"changes": changes})
            if len(value) + len(gkey) + 64 <= self.max_record:  # the common case: one message
                batch.plan.sends.append(Send(topic, partition, gkey, value))
                continue
            room = self.max_record - len(gkey) - 64
            pieces: list[list[bytes]] = [[]]
            size = 0
            for change in changes:
                raw = dumps(change)
                if pieces[-1] and size + len(raw) + 1 > room:
                    pieces.append([])
                    size = 0
                pieces[-1].append(raw)
                size += len(raw) + 1
            batch.plan.sends.extend(Send(topic, partition, gkey, b'{"changes":[' + b",".join(piece) + b"]}")
                                    for piece in pieces if piece)

    # --- building a new version from history --------------------------------------

    def plan_build_steps(self, model: ReadModel, records: Iterable[Record], every: int = 32
                         ) -> Generator[None, None, Plan]:
        """Fold history records into ``model``'s table (a version being built): the rows only; returns the Plan.

        ``model.name`` is the table of the version being built. The records
        say which aggregates to fold and up to which version; the events folded
        are those the aggregate index stored as applied (at or below its
        version, above the row's), in the order the live fold applied them: the
        new version sees what the live one saw, skips what was parked, dead-
        lettered or skipped by a release (``skip_to``), folds released records
        in version order even when the topic holds them out of order, and a
        replay of the same records changes nothing. A record that does not
        decode, or an event whose fold raises, is skipped and counted
        (``projector_build_skipped_total``): the live fold already dead-lettered
        what does not decode, and the new fold's errors must not stop the build.
        """
        batch = Batch(self.store, self.max_record)
        groups: dict[tuple[int, str], list[list[Event]]] = {}
        upcast_all = self.schemas.upcast_all
        handles = model.handles
        n = 0
        for record in records:
            n += 1
            if n % every == 0:
                yield
            try:
                events = upcast_all(decode_record(record.key, record.value))
            except InvalidRecord:
                self.metrics.build_skipped[model.name] += 1
                continue
            if not any(e.type in handles for e in events):
                continue
            groups.setdefault((record.partition, events[0].aggregate_id), []).append(events)
        control = self.control
        for (partition, aid), records_events in groups.items():
            n += len(records_events)
            if n >= every:
                n = 0
                yield
            key = aid.encode("utf-8")
            meta = agg.Meta.from_json(batch.get_json(INDEX, partition, agg.meta_key(aid)))
            row = first = batch.get_json(model.name, partition, key)
            upto = min(meta.version, max(e.version for events in records_events for e in events))
            after = row["version"] if row else 0
            if upto <= after:
                continue
            for event in self._applied_events(partition, aid, meta, after + 1, upto):
                if event.type not in handles:
                    continue
                try:
                    result = fold_events(model, row, [event], control)
                except InvalidRecord as exc:
                    self.metrics.build_skipped[model.name] += 1
                    log.warning("building %s: skipped a record of %s: %s", model.name, aid, exc.message)
                    continue
                if result is not None and model.indexes:
                    try:
                        index_signature(model, result[0]["value"])
                    except BadIndexValue as exc:
                        self.metrics.build_skipped[model.name] += 1
                        log.warning("building %s: skipped a record of %s: %s", model.name, aid, exc)
                        continue
                if result is not None:
                    row = result[0]
                    self.metrics.events_applied[model.name] += result[1]
            if row is not first:
                batch.put_json(model.name, partition, key, row)
                if model.indexes:
                    update_index(batch, model.name, partition, key, model, first["value"] if first else None,
                                 row["value"])
        return (yield from batch.finish_steps(every * 2))

    def _applied_events(self, partition: int, aid: str, meta: agg.Meta, first: int, last: int) -> list[Event]:
        """The events of ``aid`` the live fold applied from version ``first`` to ``last``, as the index stored them."""
        out: list[Event] = []
        after = first - 1

        def take(stored: Iterable[dict[str, Any]]) -> None:
            nonlocal after
            for e in stored:
                if after < e["version"] <= last:
                    out.append(Event(**e))
                    after = e["version"]

        prefix = agg.event_prefix(aid)
        for seg_key, raw in self.store.scan(INDEX, partition, prefix, start=agg.event_key(aid, first)):
            take(orjson.loads(raw))
            if after >= last or int(seg_key[len(prefix):]) >= last:  # a segment's key ends in its last version
                break
        else:
            take(meta.tail)
        return self.schemas.upcast_all(out)

    # --- releases ----------------------------------------------------------------

    def _command_record(self, batch: Batch, record: Record) -> None:
        try:
            command = orjson.loads(record.value or b"null")
            aid = (record.key or b"").decode("utf-8")
            if not isinstance(command, dict) or command.get("action") != "release" or not aid:
                raise ValueError(f"not a release command: {command!r}")
            skip_to = command.get("skip_to")
            if skip_to is not None and (not isinstance(skip_to, int) or isinstance(skip_to, bool) or skip_to < 1):
                raise ValueError(f"skip_to must be an integer >= 1, got {skip_to!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring engine command %s/%d/%d: %s", record.topic, record.partition, record.offset, exc)
            return
        self.release(batch, record.partition, aid, skip_to)

    def release(self, batch: Batch, partition: int, aid: str, skip_to: Optional[int]) -> None:
        """Unpark ``aid``: re-apply its parked records in order, after skipping to ``skip_to`` if given."""
        meta = agg.Meta.from_json(batch.get_json(INDEX, partition, agg.meta_key(aid)))
        if not meta.parked:
            log.info("release of %s: not parked (at version %d); nothing to do", aid, meta.version)
            return
        if skip_to is not None and skip_to <= meta.version:
            log.warning(
                "release of %s: skip_to %d is not above the last applied version %d; still parked",
                aid, skip_to, meta.version,
            )
            return
        parked = batch.scan(INDEX, partition, agg.parked_prefix(aid))
        for key, _ in parked:
            batch.put(INDEX, partition, key, None)
        if skip_to is not None:
            meta.version = skip_to - 1
        meta.parked = False
        self.metrics.releases += 1
        log.info("released %s at version %d; re-applying %d parked record(s)", aid, meta.version, len(parked))
        pendings = []
        for _, raw in parked:
            entry = orjson.loads(raw)
            originals = [Event(**e) for e in entry["events"]]
            pendings.append(
                Pending(
                    originals,
                    self.schemas.upcast_all(originals),
                    entry["key"].encode("utf-8", "surrogateescape") if entry.get("key") is not None else None,
                    entry["value"].encode("utf-8", "surrogateescape") if entry.get("value") is not None else None,
                    entry["source"],
                    entry.get("size"),
                )
            )
        self.fold(batch, partition, aid, meta, pendings, replay=True)

    # --- dead letters ------------------------------------------------------------

    def _deadletter(
        self, batch: Batch, key: Optional[bytes], value: Optional[bytes], reason: str, error: str, source: str,
        size: Optional[int] = None,
    ) -> None:
        """Send the record to the dead letters, with its original key and value when they fit in a record.

        A value too large for one (or one not kept: ``size``, a parked record's)
        is left out (empty value) with :data:`HEADER_TRUNCATED` giving its size;
        :data:`HEADER_SOURCE` still finds it.
        """
        self.metrics.deadletters[reason] += 1
        log.warning("dead letter %s (%s): %s", source, reason, error[:MAX_ERROR_CHARS])
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + " [...]"
        headers = [
            (HEADER_REASON, reason.encode()),
            (HEADER_ERROR, error.encode("utf-8", "replace")),
            (HEADER_SOURCE, source.encode()),
        ]
        framing = sum(len(k) + len(v) for k, v in headers) + 64
        truncated = None
        if value is not None and len(key or b"") + len(value) + framing > self.max_record:
            truncated, value = len(value), b""
        elif value is None and size is not None:
            truncated, value = size, b""
        if truncated is not None:
            headers.append((HEADER_TRUNCATED, str(truncated).encode()))
        if key is not None and len(key) + framing > self.max_record:
            key = None  # not even the key fits: the source still finds the record
        batch.plan.sends.append(Send(self.deadletter_topic, None, key, value, headers))

    # --- re-keyed models -----------------------------------------------------------

    def plan_derived(self, records: Iterable[Record]) -> Plan:
        """Plan a batch of repartition messages into the re-keyed models' rows."""
        return run_steps(self.plan_derived_steps(records))

    def plan_derived_steps(self, records: Iterable[Record], every: int = 32) -> Generator[None, None, Plan]:
        """:meth:`plan_derived` in steps, as :meth:`plan_steps`."""
        batch = Batch(self.store)
        n = 0
        for record in records:
            n += 1
            if n % every == 0:
                yield
            model = self.derived_by_topic.get(record.topic)
            try:
                if model is None:
                    raise ValueError(f"no re-keyed read model reads {record.topic}")
                message = orjson.loads(record.value or b"null")
                if not isinstance(message, dict) or not record.key or not isinstance(message.get("changes"), list):
                    raise ValueError('expected {"changes": [...]} with a group key')
            except ValueError as exc:
                log.error("skipping repartition record %s/%d/%d: %s", record.topic, record.partition, record.offset, exc)
                continue
            mtable = members_table(model)
            row = batch.get_json(model.name, record.partition, record.key)
            # The row keeps the offset of the last repartition record it took, so a
            # replay of that record (a crash between the row and its members
            # reaching Kafka) leaves it alone and only completes the members.
            row_has_record = row is not None and row.get("offset", -1) >= record.offset
            row_changed = False
            for change in message["changes"]:
                mkey = member_key(record.key, change["aggregate_id"].encode("utf-8"))
                member = batch.get_json(mtable, record.partition, mkey)
                if member is not None and member["version"] >= change["version"]:
                    self.metrics.duplicates_derived += 1
                    continue
                result = apply_change(model, row, member, change)
                batch.put_json(mtable, record.partition, mkey, result.member)
                if row_has_record:
                    continue
                row = result.row
                row_changed = True
                self.metrics.events_applied[model.name] += 1
            if row_changed:
                row["offset"] = record.offset
                batch.put_json(model.name, record.partition, record.key, row)
        return (yield from batch.finish_steps(every * 2))
