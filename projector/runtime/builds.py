"""Building a new read-model version from history beside the live one, and switching to it (CONTRACT §6).

What is live and what is built is decided at start (:func:`projector.core.lifecycle.plan_tables`);
this module carries it out on one worker:

- For each events partition this worker actively owns, a builder reads the
  events topic from the position kept in the ``_builds`` table (from the
  log's start the first time) with a consumer of its own, and folds the
  records into the new version's table (:meth:`Engine.plan_build_steps`),
  through the same sink as the live fold (changelog first, then RocksDB; the
  position last). A worker that takes the partition over (a restart, a new
  worker) recovers ``_builds`` with the rest and goes on from there.
- It runs in the fetch loop, after each round of the live fold, for a share
  of the time: at most :data:`BUSY_SHARE` of the loop while the live fold has
  work, longer rounds while it is idle. The live fold is never held up by
  more than one builder round.
- A partition has caught up once the builder has folded every record the
  live fold has: from then on the live fold writes the new version's rows
  too, in the same batches. Each partition reports its progress to every
  worker through the control topic; once all have caught up (and, with
  ``PROJECTOR_CUTOVER=manual``, the cutover was asked for), a worker writes
  the switch, and every worker answers from the new version from the
  moment it reads it. Then the old version's local state and changelog go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Optional

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from projector.core.engine import Plan
from projector.core.indexes import index_table
from projector.core.lifecycle import (
    BUILDS,
    BuildProgress,
    TableState,
    build_key,
    build_prefix,
    cutover_key,
    live_key,
    live_version,
)
from projector.runtime.faust_patches import active_partitions
from projector.runtime.kafka import client_options
from projector.runtime.slicing import TimeSlice

log = logging.getLogger(__name__)

#: The share of the event loop a build takes while the live fold has work.
BUSY_SHARE = 0.25
#: The longest builder round (seconds).
ROUND_SECONDS = 0.2
#: Records folded per builder step (one plan, one round trip to Kafka).
STEP_RECORDS = 2000
#: How often each partition reports its progress to the other workers (seconds).
REPORT_INTERVAL = 5.0
#: How long after the switch the old version's changelog topics are deleted (seconds).
CLEANUP_DELAY = 10.0
#: How often a partition whose history is gone looks at the topic's start again (seconds).
PROBLEM_RECHECK = 30.0


@dataclasses.dataclass
class PartitionBuild:
    """One events partition of one build, on the worker that owns it."""

    next_offset: Optional[int] = None  # the next history offset to fold (None: not read yet)
    caught_up: bool = False
    buffer: list = dataclasses.field(default_factory=list)
    seeked: bool = False
    rate: float = 0.0
    remaining: Optional[int] = None
    reported: float = 0.0
    reported_state: Any = None
    problem_at: float = 0.0  # when the topic's start was last found past the offset needed (0: not so)


class Build:
    """One read model's new version being built on this worker."""

    def __init__(self, state: TableState) -> None:
        self.state = state
        self.model = state.model
        self.version = state.model.version
        #: The read model as the builder folds it: into the new version's table.
        self.shadow = dataclasses.replace(state.model, name=state.build_table)
        self.partitions: dict[int, PartitionBuild] = {}
        self.consumer: Optional[AIOKafkaConsumer] = None
        self.assigned: frozenset[int] = frozenset()
        #: Why the build cannot go on (the history it needs is gone), if so.
        self.problem: Optional[str] = None
        self.switch_asked = 0.0
        self.done = False


class Builds:
    """Every build of this worker: started in the fetch loop, switched when the control topic says so."""

    def __init__(self, projector: Any, states: dict[str, TableState]) -> None:
        """``projector``: the worker (:class:`projector.runtime.app.Projector`), whose parts a build uses."""
        self.p = projector
        self.states = states
        self.builds = {name: Build(s) for name, s in states.items() if s.building is not None}
        self.live_busy = 0.0  # seconds the last live round took
        self._closing = False
        #: Read models whose switch the control topic announced, carried out at the next round.
        self.pending: set[str] = set()
        for name, build in self.builds.items():
            log.info("read model %s: version %s is live, building version %d from the events topic's history "
                     "(table %s)", name, build.state.live or "none", build.version, build.shadow.name)
        projector.control.subscribe(self._on_control)

    @property
    def active(self) -> bool:
        return any(not b.done for b in self.builds.values())

    def building(self, name: str) -> Optional[Build]:
        build = self.builds.get(name)
        return build if build is not None and not build.done else None

    def summary(self, name: str) -> Optional[dict[str, Any]]:
        """``building`` of ``GET /tables``: null, or ``{"version", "remaining", "eta_seconds"}``."""
        build = self.building(name)
        if build is None:
            return None
        out = BuildProgress.of(self.p.control.entries, name, build.version).summary(build.version, self.p.partitions)
        if build.problem:
            out["problem"] = build.problem
        return out

    # --- the builder's rounds ----------------------------------------------------

    async def round(self, live_seconds: float) -> None:
        """One round of every build after a round of the live fold (which took ``live_seconds``)."""
        if not self.active or self._closing:
            return
        for name in sorted(self.pending):
            self.pending.discard(name)
            self.switch(name)
        p = self.p
        if not p.app.tables.recovery.completed.is_set() or p.app.rebalancing:
            return
        budget = ROUND_SECONDS if live_seconds < 0.01 else min(ROUND_SECONDS, live_seconds * BUSY_SHARE / (1 - BUSY_SHARE))
        deadline = time.perf_counter() + max(0.01, budget)
        for name, build in self.builds.items():
            if build.done:
                continue
            try:
                await self._round(build, deadline)
            except Exception as exc:  # Kafka away, a rebalance: the next round tries again
                log.warning("building %s: %r; trying again", build.shadow.name, exc)
            self._maybe_switch(name, build)

    def owned(self) -> set[int]:
        topic = self.p.settings.events_topic
        return {tp.partition for tp in active_partitions(self.p.app) if tp.topic == topic}

    async def _round(self, build: Build, deadline: float) -> None:
        p = self.p
        generation = p.app.consumer_generation_id
        owned = self.owned()
        for partition in list(build.partitions):
            if partition not in owned:
                del build.partitions[partition]
                self._shadow(build, partition, False)
        for partition in owned:
            if partition not in build.partitions:
                build.partitions[partition] = self._load(build, partition)
            if build.partitions[partition].caught_up:
                self._shadow(build, partition, True)
        todo = frozenset(x for x, pb in build.partitions.items() if not pb.caught_up)
        if build.consumer is None and todo:
            build.consumer = AIOKafkaConsumer(
                **client_options(p.settings), client_id=f"{p.settings.app_id}-build-{build.shadow.name}",
                enable_auto_commit=False, isolation_level="read_committed", request_timeout_ms=15000,
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
            await build.consumer.start()
        consumer = build.consumer
        if consumer is None:
            return
        if todo != build.assigned:
            consumer.assign([TopicPartition(p.settings.events_topic, x) for x in sorted(todo)])
            build.assigned = todo
            for x in todo:
                build.partitions[x].seeked = False
                build.partitions[x].buffer = []
        for partition in sorted(todo):
            pb = build.partitions[partition]
            tp = TopicPartition(p.settings.events_topic, partition)
            if not pb.seeked:
                if pb.problem_at and time.monotonic() - pb.problem_at < PROBLEM_RECHECK:
                    continue
                start = (await consumer.beginning_offsets([tp]))[tp]
                wanted = pb.next_offset if pb.next_offset is not None else 0
                if start > wanted:
                    known = pb.problem_at
                    pb.problem_at = time.monotonic()
                    build.problem = (
                        f"the events topic no longer holds the history this build needs: partition {partition} "
                        f"starts at offset {start}, the build needs offset {wanted} onwards (retention deleted "
                        f"events). Version {build.version} of {build.model.name} cannot be built from the topic; "
                        f"set the topic's retention.ms and retention.bytes to -1 for an event store, and keep "
                        f"VERSION at the live version ({build.state.live}) meanwhile")
                    if not known:  # once, not every round
                        log.error("building %s: %s", build.shadow.name, build.problem)
                    continue
                pb.problem_at = 0.0
                consumer.seek(tp, wanted)
                pb.next_offset = wanted
                pb.seeked = True
            live_next = p.live_position(partition)
            if live_next is None:
                # Not positioned yet, or at offset 0: an empty partition has nothing to build.
                end = (await consumer.end_offsets([tp]))[tp]
                if end > (pb.next_offset or 0):
                    continue
                live_next = end
            while time.perf_counter() < deadline:
                if p.app.rebalancing or p.app.consumer_generation_id != generation:
                    return  # the partition may be another worker's now: its next round sees
                if not pb.buffer:
                    fetched = await consumer.getmany(tp, timeout_ms=0, max_records=STEP_RECORDS)
                    pb.buffer = fetched.get(tp, [])
                records = []
                while pb.buffer and pb.buffer[0].offset < live_next and len(records) < STEP_RECORDS:
                    records.append(pb.buffer.pop(0))
                if not records:
                    if pb.buffer or pb.next_offset >= live_next:
                        break
                    position = await consumer.position(tp)
                    if position >= live_next:  # only transaction markers or aborted records left below it
                        pb.next_offset = max(pb.next_offset, live_next)
                    break
                started = time.perf_counter()
                await self._fold(build, partition, records)
                took = time.perf_counter() - started
                pb.rate = 0.7 * pb.rate + 0.3 * (len(records) / max(took, 1e-6)) if pb.rate else len(records) / max(took, 1e-6)
            pb.remaining = max(0, live_next - pb.next_offset)
            if pb.next_offset >= live_next:
                await self._caught_up(build, partition)
            self._report(build, partition, live_next)
            if time.perf_counter() >= deadline:
                break

    def _load(self, build: Build, partition: int) -> PartitionBuild:
        """Where the build of ``partition`` stands, as ``_builds`` keeps it.

        A partition that had caught up is caught up still only if the live fold
        is where the new version last followed it: had a worker that does not
        build it (an older release, during a rolling upgrade) folded more of it
        meanwhile, the build goes on from where the new version stopped.
        """
        raw = self.p.store.get(BUILDS, partition, build.shadow.name.encode())
        entry = orjson.loads(raw) if raw else {}
        pb = PartitionBuild(next_offset=entry.get("offset"), caught_up=entry.get("caught_up") is True)
        live = self.p.live_position(partition)
        if pb.caught_up and live is not None and (pb.next_offset or 0) < live:
            log.warning("building %s: partition %d had caught up at offset %s, but the live fold is at %d: "
                        "building on from there", build.shadow.name, partition, pb.next_offset, live)
            pb.caught_up = False
        return pb

    def note_live_batch(self, plan: Plan, ends: dict[int, int]) -> None:
        """A live batch that writes new versions too: it moves their positions in ``_builds`` with it."""
        shadow = self.p.engine.shadow
        for partition, end in ends.items():
            for model in shadow.get(partition, ()):
                plan.writes.setdefault((BUILDS, partition), {})[model.name.encode()] = orjson.dumps(
                    {"offset": end, "caught_up": True})

    async def _fold(self, build: Build, partition: int, records: list) -> None:
        p = self.p
        slice_ = TimeSlice()
        plan = await slice_.run(p.engine.plan_build_steps(build.shadow, records))
        pb = build.partitions[partition]
        pb.next_offset = records[-1].offset + 1
        self._position(plan, build, partition, pb)
        p.metrics.build_records[build.shadow.name] += len(records)
        await p.sink.execute(plan, slice_)

    def _position(self, plan: Plan, build: Build, partition: int, pb: PartitionBuild) -> None:
        value = orjson.dumps({"offset": pb.next_offset, "caught_up": pb.caught_up})
        plan.writes.setdefault((BUILDS, partition), {})[build.shadow.name.encode()] = value

    async def _caught_up(self, build: Build, partition: int) -> None:
        pb = build.partitions[partition]
        pb.caught_up = True
        plan = Plan()
        self._position(plan, build, partition, pb)
        await self.p.sink.execute(plan, TimeSlice())
        self._shadow(build, partition, True)
        log.info("building %s: partition %d has caught up with the live fold at offset %d; the live fold "
                 "writes both versions from now on", build.shadow.name, partition, pb.next_offset)

    def _shadow(self, build: Build, partition: int, on: bool) -> None:
        shadow = self.p.engine.shadow
        models = [m for m in shadow.get(partition, []) if m.name != build.shadow.name]
        if on:
            models.append(build.shadow)
        if models:
            shadow[partition] = models
        else:
            shadow.pop(partition, None)

    def _report(self, build: Build, partition: int, live_next: int) -> None:
        """Tell every worker how far this partition is (every REPORT_INTERVAL s, and when it catches up)."""
        pb = build.partitions[partition]
        now = time.monotonic()
        state = {"caught_up": pb.caught_up, "remaining": pb.remaining, "rate": round(pb.rate, 1),
                 "offset": pb.next_offset, "worker": self.p.settings.url}
        if pb.reported_state is not None and pb.reported_state["caught_up"] == pb.caught_up and (
                now - pb.reported < REPORT_INTERVAL):
            return
        current = self.p.control.entries.get(build_key(build.model.name, build.version, partition))
        if pb.caught_up and isinstance(current, dict) and current.get("caught_up") is True:
            pb.reported_state, pb.reported = state, now
            return
        pb.reported_state, pb.reported = state, now
        self.p.app.add_future(self._write(build_key(build.model.name, build.version, partition), state))

    async def _write(self, key: str, value: Any) -> None:
        try:
            await self.p.write_control(key, value)
        except Exception as exc:  # the broker is away: the next report tries again
            log.warning("could not write %s: %r", key, exc)

    # --- the switch ------------------------------------------------------------------

    def _maybe_switch(self, name: str, build: Build) -> None:
        """Write the switch once every partition has caught up (and the cutover was asked for, if manual)."""
        entries = self.p.control.entries
        if not self.caught_up(name):
            return
        if self.p.settings.cutover == "manual" and entries.get(cutover_key(name)) != build.version:
            return
        now = time.monotonic()
        if now - build.switch_asked < REPORT_INTERVAL:
            return
        build.switch_asked = now
        log.info("building %s: every partition has caught up; switching %s to version %d",
                 build.shadow.name, name, build.version)
        self.p.app.add_future(self._write(live_key(name), {"version": build.version}))

    def caught_up(self, name: str) -> bool:
        build = self.building(name)
        return build is not None and BuildProgress.of(
            self.p.control.entries, name, build.version).caught_up(self.p.partitions)

    def _on_control(self, key: str, old: Any, new: Any) -> None:
        """The switch is read here, and carried out between two batches of the live fold (:meth:`round`)."""
        for name, build in self.builds.items():
            if key == live_key(name) and not build.done:
                found, version = live_version(self.p.control.entries, name)
                if found and version == build.version:
                    self.pending.add(name)

    def switch(self, name: str) -> None:
        """Answer from the new version from now on; the old one's state and changelog go.

        Called in the fetch loop between two batches: no batch planned against
        the old version is still being written.
        """
        build = self.builds[name]
        p = self.p
        old = build.state.live_table
        build.done = True
        build.state.live = build.version
        p.store.tables[name] = p.tables[build.shadow.name]
        if build.model.indexes:
            p.store.tables[index_table(name)] = p.tables[index_table(build.shadow.name)]
        for partition in list(p.engine.shadow):
            self._shadow(build, partition, False)
        if all(m.name != name for m in p.engine.models):
            p.engine.models.append(build.model)
            p.engine.model_names.add(name)
            if build.model.indexes:
                p.engine.indexed[name] = build.model
        p.rows.wake_all()
        log.info("read model %s: switched to version %d (table %s)%s", name, build.version, build.shadow.name,
                 f"; removing version table {old}" if old else "")
        if build.consumer is not None:
            p.app.add_future(build.consumer.stop())
            build.consumer = None
        p.app.add_future(self._clean_up(name, build, old))

    async def _clean_up(self, name: str, build: Build, old: Optional[str]) -> None:
        """The old version's local state now, its changelog topic and the build's control entries a little later."""
        p = self.p
        olds = [] if old is None else [old] + ([index_table(old)] if build.model.indexes else [])
        # Not while Faust restores tables after a rebalance: dropping a table changes the consumer's
        # subscription, which takes its assignment away under the restore (Faust's recovery then crashes).
        while olds and not p.recovered:
            await asyncio.sleep(0.5)
        for table in olds:
            if table in p.tables:
                removed = await p.forget_table(table)
                log.info("removed the local state of %s (%d partition databases)", table, removed)
        await asyncio.sleep(CLEANUP_DELAY)
        for table in olds:
            await p.delete_changelog(table)
        entries = p.control.entries
        for key in [k for k in entries if k.startswith(build_prefix(name, build.version))]:
            await self._write(key, None)

    async def close(self) -> None:
        self._closing = True
        for build in self.builds.values():
            if build.consumer is not None:
                try:
                    await build.consumer.stop()
                except Exception as exc:
                    log.debug("stopping the builder's consumer: %r", exc)
                build.consumer = None



async def plan_worker_tables(settings: Any, catalog: Any) -> dict[str, TableState]:
    """Each read model's live version and the one to build, from the control topic and the changelogs that exist.

    Reads before any topic is created (a metadata request for all topics, and
    the control topic if it exists). When a build is to start and the control
    topic does not yet say which version is live, it writes that down first,
    so that every worker, restarted at any point of the build, agrees.
    """
    from projector.core.engine import INDEX
    from projector.core.lifecycle import plan_tables
    from projector.runtime.control_table import read_control_topic, write_control_topic
    from projector.runtime.topics import changelog_topic_name, topic_names

    names = await topic_names(settings)
    prefix, suffix = f"{settings.app_id}-", "-changelog"
    existing = {n[len(prefix):-len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)}
    fresh = changelog_topic_name(settings, INDEX) not in names
    entries: dict[str, Any] = {}
    if settings.control_topic in names and not fresh:
        entries = dict((await read_control_topic(settings)).entries)
    states = plan_tables(catalog, entries, existing, fresh)
    for name, state in states.items():
        if state.building is not None and live_key(name) not in entries:
            await write_control_topic(settings, live_key(name), {"version": state.live})
            log.info("read model %s: version %s is live; version %d will be built beside it", name,
                     state.live or "none", state.building)
    return states
