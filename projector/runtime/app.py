"""The worker's runtime: the Faust app, its topics and tables, and the parts that run a batch.

:class:`Projector` builds one worker from its settings and read models and
wires the runtime's parts together; each part owns one thing:

- the engine (:mod:`projector.core.engine`) plans each batch;
- :class:`ChangelogSink` carries the plan out (Kafka first, then RocksDB);
- :class:`RowWaiters` parks read-your-writes requests until a row changes;
- :class:`WriterGate` and :class:`CommandRoundTrip` are the command side's
  catch-up gate and ``POST /commands``' round trip;
- :class:`ControlRecovery`, :class:`GapFiller` and :class:`RecoveryProgress`
  follow the control topic and the tables' recovery.

It imports nothing from the web layer: :mod:`projector.worker` builds a
worker with its web views.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import shutil
import time
from typing import Any, Callable, Optional, Sequence

from faust.types import TP

from projector.core.catalog import Catalog, load_catalog
from projector.core.commands import Answer, decide_steps, prune_answers, unavailable_error
from projector.core.control import ControlState, encode_value
from projector.core.engine import INDEX, Engine, run_steps, tables_of
from projector.core.index import parked_aggregates
from projector.core.indexes import index_table
from projector.core.lifecycle import TableState
from projector.core.metrics import LAG_PROBE_INTERVAL, Metrics
from projector.core.schemas import Schemas
from projector.runtime.builds import Builds
from projector.runtime.command_side import CommandQueue, CommandRoundTrip, SendAnswers, WriterGate
from projector.runtime.config import Settings
from projector.runtime.control_table import ControlRecovery, ControlTable, GapFiller
from projector.runtime.digests import flush_changelog_buffers
from projector.runtime.faust_patches import (
    PatchedApp,
    active_partitions,
    check_restore_offsets,
    drop_table,
    keep_changelog_records_on_resume,
    open_partition_dbs,
    raw_producer,
    read_offset,
)
from projector.runtime.fencing import Fenced, WriterFence
from projector.runtime.kafka import KAFKA_WRITE_TIMEOUT, BrokerWatch, faust_credentials, quiet_repeated_client_logs
from projector.runtime.recovery import RecoveryProgress
from projector.runtime.sink import ChangelogSink
from projector.runtime.slicing import TimeSlice
from projector.runtime.stores import FaustStore, rocksdb_options
from projector.runtime.topics import (
    changelog_topic_name,
    command_topic_name,
    delete_topic,
    release_topic_name,
    repartition_topic_name,
    replication_configs,
)
from projector.runtime.waiters import ParkingLimit, RowWaiters

log = logging.getLogger(__name__)

#: How often the writer deletes command answers older than PROJECTOR_COMMAND_ID_TTL (seconds).
COMMAND_PRUNE_INTERVAL = 60.0
#: Seconds between two flushes of the changelog records Faust buffers for the standby copies.
STANDBY_FLUSH_INTERVAL = 1.0

#: Installs the web views on the aiohttp application Faust serves: (web_app, projector).
InstallWeb = Callable[[Any, "Projector"], None]
#: aiohttp application options (middlewares, limits) for a worker.
WebOptions = Callable[["Projector"], dict[str, Any]]


class ProjectorApp(PatchedApp):
    """The worker's Faust app: starts the worker's background tasks and mounts its web views."""

    projector: "Projector"

    async def on_start(self) -> None:
        await super().on_start()
        p = self.projector
        self.add_future(p.control_recovery.unstick())
        self.add_future(p.gap_filler.run())
        self.add_future(p.probe_loop_lag())
        self.add_future(p.recovery_progress.run())
        self.add_future(p.broker.run())

    async def on_started(self) -> None:
        await super().on_started()
        # Everything made so far (modules, Faust, the tables) lives as long as the
        # worker: out of the collector's sight, a full collection no longer walks
        # it, which held the event loop (and every request) 30-80 ms each time.
        gc.freeze()
        log.info("started: %d objects kept out of the garbage collector's full passes", gc.get_freeze_count())

    async def after_fetch(self) -> None:
        await self.projector.after_fetch()

    @property
    def fetch_wait(self) -> float:
        """How long an idle round of the fetch loop waits for records: short while a build runs in its rounds."""
        return 0.05 if self.projector.builds.active else 1.0

    async def on_stop(self) -> None:
        # Requests waiting here for a row go elsewhere: this worker's partitions are about to move.
        self.projector.stopping = True
        self.projector.rows.wake_all()
        await self.projector.builds.close()
        await self.projector.fence.drop_all()
        await super().on_stop()

    def on_webserver_init(self, web: Any) -> None:
        if self.projector.install_web is not None:
            self.projector.install_web(web.web_app, self.projector)


class Projector:
    """One worker: settings, read models, the Faust app with its topics and tables, and the runtime's parts."""

    def __init__(
        self,
        settings: Settings,
        catalog: Optional[Catalog] = None,
        partitions: Optional[int] = None,
        *,
        web_options: Optional[WebOptions] = None,
        install_web: Optional[InstallWeb] = None,
        send_answers: Optional[SendAnswers] = None,
        states: Optional[dict[str, TableState]] = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog if catalog is not None else load_catalog()
        #: Each read model's live version and the one being built (:func:`projector.core.lifecycle.plan_tables`).
        self.states = states if states is not None else {m.name: TableState(m, m.version) for m in self.catalog.models}
        self.schemas = Schemas.from_modules(self.catalog.modules)
        self.partitions = partitions or settings.partitions
        self.metrics = Metrics()
        self.install_web = install_web
        #: Whether Kafka answers now, and since when (/readyz, /status, /metrics).
        self.broker = BrokerWatch(settings)
        quiet_repeated_client_logs()
        self.app = ProjectorApp(
            settings.app_id,
            broker=settings.faust_broker,
            broker_credentials=faust_credentials(settings),
            store="rocksdb://",
            datadir=str(settings.data_dir),
            autodiscover=False,
            web_enabled=True,
            web_bind=settings.bind_address,
            web_host=settings.web_host,
            web_port=settings.web_port,
            canonical_url=settings.url,
            web_application_options=web_options(self) if web_options is not None else {},
            web_tables_enabled=False,
            web_router_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
            web_metrics_enabled=False,
            topic_partitions=self.partitions,
            topic_replication_factor=settings.replication_factor,
            producer_acks=-1,
            # A batch of several records stays under what a topic takes of one (max_record_bytes).
            producer_max_batch_size=min(512 * 1024, settings.max_record_bytes),
            # A fetch is one batch, and the engine's cost per event falls with the
            # batch (one index segment, row and repartition message per key per
            # batch): up to 4 MiB per partition (Faust: 1 MiB), and at most 20,000
            # records, which bounds the memory a batch takes (measured: peak RSS
            # about 400 MiB at 20,000, 450 at 30,000, 500 at 50,000).
            consumer_max_fetch_size=4 * 1024**2,
            broker_max_poll_records=20_000,
            # A worker killed with kill -9 holds its partitions until its session
            # times out; Faust's 60 s default is a long outage.
            broker_session_timeout=20.0,
            # Static group membership (PROJECTOR_INSTANCE_ID): a worker restarted within the session timeout
            # takes its partitions back without a rebalance; a clean stop still leaves the group at once
            # (faust_patches.StaticMember). Only this consumer is in the group: every other one is group-less.
            consumer_group_instance_id=settings.instance_id,
            # Commit at least every second (Faust: 2.8 s): a restart replays less,
            # and progress (consumer-group lag) shows sooner.
            broker_commit_interval=1.0,
            broker_heartbeat_interval=3.0,
            consumer_auto_offset_reset="earliest",
            # A worker that takes over a partition from one that failed starts from
            # its standby copy instead of replaying the whole changelog.
            table_standby_replicas=settings.standby_replicas,
            # Faust's leader election (for on_leader timers) is unused: no topic for it.
            topic_disable_leader=True,
            # projector creates every topic before Faust starts (projector.runtime.topics), with
            # the settings each needs; Faust only uses them.
            topic_allow_declare=False,
        )
        self.app.projector = self

        def topic(name: str, internal: bool = False) -> Any:
            t = self.app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.partitions,
                internal=internal,
            )
            # Subscribed and acked like an agent's topic; delivered in batches.
            self.app.topics.add(t)
            return t

        self.events_topic = topic(settings.events_topic)
        #: The engine's release requests (``POST /aggregates/{id}/release``).
        self.release_topic = topic(release_topic_name(settings), internal=True)
        #: POST /commands: commands for the writer of each partition.
        self.command_topic = topic(command_topic_name(settings), internal=True)
        self.repartition_topics = {
            d.name: topic(repartition_topic_name(settings, d.name), internal=True) for d in self.catalog.derived
        }

        tables: dict[str, Any] = {}

        def table(name: str, help_: str) -> None:
            tables[name] = self.app.Table(
                name,
                partitions=self.partitions,
                key_type=bytes,
                value_type=bytes,
                options=rocksdb_options(),
                help=help_,
                # Changelogs are Faust's to create: give them the same durability as projector's topics.
                extra_topic_configs=replication_configs(settings),
            )

        for name, description in tables_of(self.catalog, self.states):
            table(name, description)
        #: The Faust tables by their own names (a read model's version 2 on is ``name-vN``).
        self.tables = tables
        # Everything else reads and writes a read model by its name: the live version's table.
        aliases = dict(tables)
        for name, state in self.states.items():
            if state.live_table is not None:
                aliases[name] = tables[state.live_table]
                if state.model.indexes:
                    aliases[index_table(name)] = tables[index_table(state.live_table)]
        self.store = FaustStore(aliases)

        # The control table: every worker reads the whole control topic.
        self.control = ControlState(self.catalog.control_settings)
        self.control_table = self.app.tables.add(
            ControlTable(self.app, topic=settings.control_topic, state=self.control)
        )
        self.app.global_appliers = {settings.control_topic: self.control_table.apply_message}
        self.control_recovery = ControlRecovery(self.app, settings, self.control)
        self.app.task(self.control_recovery.capture_end)
        self.gap_filler = GapFiller(settings, self.control, self.control_recovery.position)

        # Recovery of the tables from their changelogs.
        self.recovery_progress = RecoveryProgress(self.app.tables.recovery)
        check_restore_offsets(self.app, tables, self.store.clear_partition)
        keep_changelog_records_on_resume(self.app)
        for t in tables.values():
            self.recovery_progress.count(t)

        self.engine = Engine(
            self.catalog,
            self.store,
            partitions=self.partitions,
            deadletter_topic=settings.deadletter_topic,
            repartition_topics={name: t.get_topic_name() for name, t in self.repartition_topics.items()},
            metrics=self.metrics,
            schemas=self.schemas,
            control=self.control.entries,
            max_record=settings.max_record_bytes,
        )
        # A brand-new read model is folded live only once it has been built from history.
        self.engine.models = [m for m in self.engine.models if self.states[m.name].live is not None]
        self.engine.model_names = {m.name for m in self.engine.models}
        self.engine.indexed = {m.name: m for m in self.engine.models if m.indexes}
        #: Time the live fold took in this round of the fetch loop (the builds take a share of it).
        self.live_busy = 0.0
        #: The next offset the live fold will fold, by events partition, since the last assignment.
        self.folded: dict[int, int] = {}
        #: Set when the worker begins to stop: waiting requests leave (their rows move to other workers).
        self.stopping = False
        #: Read-your-writes: requests parked until a row changes.
        self.rows = RowWaiters()
        #: The cap on requests parked at once (PROJECTOR_MAX_PARKED): rows and /control waits.
        self.parking = ParkingLimit(settings.max_parked)
        #: The writers' transactional producers: a writer that lost its partition is fenced.
        self.fence = WriterFence(settings)
        self.sink = ChangelogSink(
            store=self.store, producer=lambda: raw_producer(self.app), guard_tables=self.engine.guard_tables,
            metrics=self.metrics, rows=self.rows, append=self.fence.append,
        )
        self.writer_gate = WriterGate(self.events_topic.get_topic_name(), self.fence)
        #: Commands waiting for their partition's gate.
        self.command_queue = CommandQueue()
        self._next_prune = 0.0
        self._next_standby_flush = 0.0
        self.commands = CommandRoundTrip(
            url=settings.url, command_topic=self.command_topic.get_topic_name(), partitions=self.partitions,
            produce=self.produce, send_answers=send_answers, spawn=self.app.add_future,
            is_peer=self.is_group_member,
        )
        #: New read-model versions being built from history beside the live ones.
        self.builds = Builds(self, self.states)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        #: Assignments this worker received since it started: one per rebalance of the group it took part in.
        self.assignments = 0
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.batch_handlers = {
            self.events_topic.get_topic_name(): self._on_events,
            self.release_topic.get_topic_name(): self._on_events,
            **{t.get_topic_name(): self._on_derived for t in self.repartition_topics.values()},
            # Last: a fetch's events are folded before its commands are decided.
            self.command_topic.get_topic_name(): self._on_commands,
        }

    # --- batch handlers ----------------------------------------------------------

    async def _on_events(self, messages: Sequence[Any]) -> None:
        release_topic = self.release_topic.get_topic_name()
        records = [m for m in messages if m.topic != release_topic]
        releases = [m for m in messages if m.topic == release_topic]
        if records and not self.metrics.first_record_time:
            self.metrics.first_record_time = time.time()
        started = time.perf_counter()
        # Let HTTP requests in between steps: a large batch takes long to fold.
        slice_ = TimeSlice()
        plan = await slice_.run(self.engine.plan_steps(records, releases))
        self.metrics.phase_seconds["plan"] += time.perf_counter() - started - slice_.paused
        ends: dict[int, int] = {}
        for record in records:
            if record.offset >= ends.get(record.partition, 0):
                ends[record.partition] = record.offset + 1
        if self.engine.shadow:
            self.builds.note_live_batch(plan, ends)
        await self.sink.execute(plan, slice_)
        self.live_busy += time.perf_counter() - started - slice_.paused
        self.folded.update(ends)

    async def _on_derived(self, messages: Sequence[Any]) -> None:
        started = time.perf_counter()
        slice_ = TimeSlice()
        plan = await slice_.run(self.engine.plan_derived_steps(messages))
        self.metrics.phase_seconds["plan_derived"] += time.perf_counter() - started - slice_.paused
        await self.sink.execute(plan, slice_)

    async def _on_commands(self, messages: Sequence[Any]) -> None:
        """Decide a fetch's commands as the writer of their partitions, then answer them.

        Commands of a partition whose gate is shut wait (:class:`CommandQueue`)
        and are decided once it opens (:meth:`after_fetch`).
        """
        gate = self.writer_gate
        for partition in {m.partition for m in messages} | self.command_queue.partitions():
            await gate.check(partition, self.app.consumer)
        now, refused = self.command_queue.take(messages, gate)
        if refused:
            self.commands.deliver(self._not_ready(refused))
        if not now:
            return
        started = time.perf_counter()
        slice_ = TimeSlice()
        control = self.control
        plan, answers = await slice_.run(decide_steps(
            self.engine, self.live_catalog, now,
            events_topic=self.events_topic.get_topic_name(),
            settings=control.settings_view(),
            enabled=control.commands_enabled,
            ready=gate.is_open,
            moved=gate.moved,
        ))
        self.metrics.phase_seconds["decide"] += time.perf_counter() - started - slice_.paused
        try:
            await self.sink.execute(plan, slice_)
        except Fenced as exc:
            answers = self._append_failed(plan, answers, exc)
        self.commands.deliver(answers)

    def _not_ready(self, records: Sequence[Any]) -> list[Answer]:
        """``not_ready`` answers for command records this writer does not keep (the requester sends them again)."""
        _, answers = run_steps(decide_steps(self.engine, self.live_catalog, records,
                                            events_topic=self.events_topic.get_topic_name(),
                                            settings={}, enabled=True, ready=lambda partition: False))
        return answers

    def _append_failed(self, plan: Any, answers: list[Answer], exc: Fenced) -> list[Answer]:
        """A batch whose appends did not all commit: nothing of it is written, and its answers say so.

        Partitions whose transaction committed before the one that failed hold
        events this worker has not written into its rows: every partition of
        the batch fences and catches up again before it decides more.
        """
        for partition in {send.partition for send in plan.appends}:
            self.writer_gate.append_failed(partition, by_another=exc.by_another and partition == exc.partition)
        self.metrics.commands["append_failed"] += 1
        out = []
        for answer in answers:
            if answer.replayed or answer.status in (503, 504):
                out.append(answer)
                continue
            body = unavailable_error(answer.command_id, f"{exc}; the command may have been decided: send the "
                                                        "same command_id again to learn its outcome (it is never "
                                                        "applied twice)")
            out.append(Answer(answer.command_id, 503, body, reply_to=answer.reply_to,
                              aggregate_id=answer.aggregate_id))
        return out

    async def after_fetch(self) -> None:
        """After each round of the fetch loop: decide waiting commands whose gate opened, build, prune old answers."""
        if self.command_queue.waiting:
            await self._on_commands(())
        if self.builds.active:
            busy, self.live_busy = self.live_busy, 0.0
            await self.builds.round(busy)
        now = time.time()
        if now >= self._next_standby_flush:
            self._next_standby_flush = now + STANDBY_FLUSH_INTERVAL
            flush_changelog_buffers(self.app)  # standby copies within a second of their active copy
        if now >= self._next_prune:
            self._next_prune = now + max(1.0, min(COMMAND_PRUNE_INTERVAL, self.settings.command_id_ttl / 4))
            try:
                await self.prune_command_answers(now)
            except Exception as exc:  # Kafka away: the next round tries again
                log.warning("pruning old command answers failed: %r", exc)

    async def prune_command_answers(self, now: float) -> int:
        """Delete the answers older than ``PROJECTOR_COMMAND_ID_TTL`` of the partitions this worker writes."""
        before = int(now - self.settings.command_id_ttl)
        pruned = 0
        for partition in sorted(self.writer_gate.open):
            plan, n = prune_answers(self.engine, partition, before)
            if n:
                await self.sink.execute(plan, TimeSlice())
                pruned += n
        if pruned:
            self.metrics.commands["pruned"] += pruned
            log.info("pruned %d command answers older than %d s", pruned, self.settings.command_id_ttl)
        return pruned

    async def _on_revoked(self, app: Any, revoked: Any, **kwargs: Any) -> None:
        """Wake every parked request: the row may now be written by another worker.

        The writer's catch-up gate starts over: whichever partitions this
        worker gets next, it folds each to its end before deciding commands.
        """
        self.writer_gate.reset()
        self.folded.clear()
        self.rows.wake_all()
        waiting = self.command_queue.drain()
        if waiting:
            self.commands.deliver(self._not_ready(waiting))

    async def _on_assigned(self, app: Any, assigned: Any, **kwargs: Any) -> None:
        self.assignments += 1

    def group_membership(self) -> dict[str, Any]:
        """This worker in its consumer group (/status): instance id, generation, assignments since it started."""
        return {"instance_id": self.settings.instance_id, "generation": self.app.consumer_generation_id,
                "assignments": self.assignments}

    async def probe_loop_lag(self) -> None:
        """Measure how late the event loop wakes a sleeping task (projector_event_loop_lag_seconds)."""
        interval = LAG_PROBE_INTERVAL
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval)
            self.metrics.observe_lag(max(0.0, time.perf_counter() - started - interval))

    # --- writing -----------------------------------------------------------------

    async def write_control(self, key: str, value: Any, timeout: float = KAFKA_WRITE_TIMEOUT) -> int:
        """Write one control entry (``None``: delete it); returns the record's offset.

        :class:`ControlError` for an entry this worker refuses;
        ``asyncio.TimeoutError`` when Kafka has not acknowledged it within
        ``timeout`` seconds: it may still be written later.
        """
        self.control.check_entry(key, value)
        meta = await self.produce(self.settings.control_topic, key.encode("utf-8"), encode_value(value), 0, timeout)
        return meta.offset

    async def produce(self, topic: str, key: bytes, value: bytes, partition: int, timeout: float) -> Any:
        """Send one record with the app's producer and wait until Kafka has it; its RecordMetadata.

        Bounded by ``timeout`` seconds (``asyncio.TimeoutError``), the wait for
        room in the producer's buffer included: with the broker away, Faust's
        producer would otherwise wait for its request timeout (20 minutes).
        """
        async def send() -> Any:
            return await (await self.app.producer.send(topic, key, value, partition, None, None))

        return await asyncio.wait_for(send(), timeout)

    # --- state of the worker -----------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Ready once the tables are recovered, the control topic is read to its startup end, and no rebalance is under way."""
        if not self.app.tables.recovery.completed.is_set():
            return False, "recovering tables from their changelogs"
        if not self.control.caught_up:
            target = "?" if self.control.target is None else self.control.target
            return False, f"reading the control topic ({self.control.offset + 1} of {target} records)"
        if self.app.rebalancing:
            return False, "rebalancing"
        return True, "ready"

    def consumer_lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, lag) for each assigned partition of the events topic."""
        out = []
        consumer = self.app.consumer
        for tp in sorted(consumer.assignment()):
            if tp.topic != self.settings.events_topic:
                continue
            try:
                highwater = consumer.highwater(tp)
            except Exception as exc:  # not fetched yet, or revoked meanwhile
                log.debug("no highwater for %s yet: %r", tp, exc)
                highwater = None
            if highwater is None:
                continue
            read = read_offset(consumer, tp)
            out.append((tp.topic, tp.partition, max(0, highwater - (read + 1 if read is not None else 0))))
        return out

    def model(self, name: str) -> Any:
        return self.catalog.get(name)

    @property
    def live_catalog(self) -> Catalog:
        """The catalog without the read models no version of which answers yet (brand new, being built)."""
        building = {name for name, state in self.states.items() if state.live is None}
        if not building:
            return self.catalog
        return dataclasses.replace(self.catalog, models=[m for m in self.catalog.models if m.name not in building])

    def live_position(self, partition: int) -> Optional[int]:
        """The next offset of events ``partition`` the live fold will fold (None: not known yet).

        What it folded since the last assignment, or else where the consumer
        was positioned (Faust keeps the offset it seeked to; None for 0).
        """
        folded = self.folded.get(partition)
        if folded is not None:
            return folded
        return read_offset(self.app.consumer, TP(self.settings.events_topic, partition))

    async def forget_table(self, name: str) -> int:
        """Stop keeping table ``name`` (an old read-model version): out of Faust, its local state deleted.

        Its changelog is no longer read (the subscription changes, which
        rebalances the group once). Returns the partition databases removed.
        """
        table = self.tables.pop(name)
        await drop_table(self.app, table)
        if self.store.tables.get(name) is table:  # version 1's name is also the read model's
            del self.store.tables[name]
        store = table.data
        dbs = open_partition_dbs(store)
        for db in dbs.values():
            db.close()
        dbs.clear()
        removed = 0
        for partition in range(self.partitions):
            path = store.partition_path(partition)
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    async def delete_changelog(self, name: str) -> None:
        """Delete the changelog topic of table ``name`` (an old read-model version's): projector made it."""
        topic = changelog_topic_name(self.settings, name)
        try:
            await delete_topic(self.settings, topic)
            log.info("deleted topic %s", topic)
        except Exception as exc:  # gone already (another worker), or no rights: say so
            log.warning("could not delete topic %s: %r", topic, exc)

    @property
    def recovered(self) -> bool:
        """False from a rebalance's start until the tables of the partitions it assigned are restored.

        Meanwhile a newly assigned partition's rows are not all there yet: a
        read would find a row missing, or older than one already served.
        """
        return self.app.tables.recovery.completed.is_set() and not self.app.rebalancing

    def owns(self, partition: int) -> bool:
        """True when this worker actively processes ``partition`` of the events topic."""
        return TP(self.settings.events_topic, partition) in active_partitions(self.app)

    def parked_aggregates(self) -> int:
        """Aggregates with parked records in the events partitions this worker processes (/metrics)."""
        total = 0
        for tp in active_partitions(self.app):
            if tp.topic == self.settings.events_topic:
                def scan(prefix: bytes, start: Optional[bytes], partition: int = tp.partition) -> Any:
                    return self.store.scan(INDEX, partition, prefix, start)

                total += parked_aggregates(scan)
        return total

    def group_urls(self) -> set[str]:
        """Web URLs of the workers of this group (this one included), as Faust's partition assignor knows them."""
        urls = {self.settings.url.rstrip("/")}
        try:
            urls.update(str(u).rstrip("/") for u in self.app.router.tables_metadata())
        except Exception as exc:  # before the first assignment
            log.debug("no worker metadata yet: %r", exc)
        return {u for u in urls if u}

    def is_group_member(self, url: str) -> bool:
        """True when ``url`` is the address a worker of this group advertises (where command answers may go)."""
        return str(url).rstrip("/") in self.group_urls()

    def owner_url(self, table: str, partition: int) -> Optional[str]:
        """The web URL of the worker that owns ``partition`` of ``table``, if known."""
        # Every table is co-partitioned with the events topic and assigned with it: the
        # aggregate index's owners are every table's (a read model's name may be an alias).
        for url, topics in self.app.router.table_metadata(INDEX).items():
            for partitions in topics.values():
                if partition in partitions:
                    return str(url)
        return None
