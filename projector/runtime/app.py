"""Wiring: the Faust app, its tables and topics, batch handlers and web views."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Optional, Sequence

import faust
from faust.types import TP

from projector.runtime.batching import BatchingTransport
from projector.runtime.config import Settings
from projector.core.control import ControlState, encode_value
from projector.runtime.control_table import ControlTable, GapFiller, records_end
from projector.core.engine import COMMANDS, INDEX, Engine, Plan, members_table
from projector.runtime.kafka import KAFKA_WRITE_TIMEOUT, BrokerWatch, faust_credentials, quiet_repeated_client_logs
from projector.core.metrics import LAG_PROBE_INTERVAL, Metrics
from projector.core.catalog import Catalog, load_catalog
from projector.runtime.recovery import RecoveryProgress
from projector.core.schemas import Schemas
from projector.runtime.slicing import TimeSlice
from projector.runtime.stores import FaustStore, rocksdb_options
from projector.runtime.topics import replication_configs, command_topic_name, commands_topic_name, repartition_topic_name
from projector.core.commands import Answer, decide_steps

log = logging.getLogger(__name__)


def keep_changelog_records_on_resume(app: faust.App) -> None:
    """Faust's flow control, but resuming it no longer empties the queue of changelog records.

    Faust's tables read every changelog record (active recovery, standby
    copies, global tables) through one queue that flow control empties each
    time it resumes. The last resume of a rebalance comes after the standby
    partitions were resumed and fetching: the records queued at that moment
    (most often one, between two deliveries) were dropped while the consumer
    moved past them, and the standby copy lacked them for good. Once
    promoted, it folded on a stale row: a re-keyed group whose member record
    was dropped kept a wrong sum. Resuming now keeps what is queued: those
    records belong to the assignment being resumed, and the recovery applies
    each offset at most once. A revoke still empties the queue (the next
    recovery reads again from the offsets applied).
    """
    flow_control = app.flow_control
    changelog_queue = app.tables.changelog_queue

    def resume() -> None:
        flow_control._suspend.clear()
        flow_control._resume.set()
        for queue in list(flow_control._queues):
            if queue is not changelog_queue:
                queue.clear()

    flow_control.resume = resume  # type: ignore[method-assign]


class ProjectorApp(faust.App):
    """A Faust app that delivers projector's topics in batches and mounts its web views."""

    projector: "Projector"
    batch_handlers: dict[str, Any]

    def _new_transport(self) -> Any:
        return BatchingTransport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        self.add_future(self.projector._unstick_control_recovery())
        self.add_future(self.projector.gap_filler.run())
        self.add_future(self.projector._probe_loop_lag())
        self.add_future(self.projector.recovery_progress.run())
        self.add_future(self.projector.broker.run())

    async def _stop_consumer(self) -> None:
        """On shutdown, let the batch being folded finish before Faust cancels the fetch loop.

        Faust cancels the loop first and commits afterwards; a batch cut off
        mid-fold is never acked, so its records would be read again by the
        next owner (harmless, the folds are idempotent, but not a clean
        hand-over).
        """
        consumer = self._consumer
        if consumer is not None and hasattr(consumer, "finish_fetch"):
            if not await consumer.finish_fetch(timeout=self.conf.broker_session_timeout / 2):
                self.log.warning("the batch being folded did not finish in time; its records will be read again")
        await super()._stop_consumer()
        if consumer is not None and hasattr(consumer, "commit_positions"):
            log.info("stopping: %s", consumer.commit_positions())

    def on_rebalance_end(self) -> None:
        """The rebalance is over: the stream partitions are sought, deliver them again (BatchingConsumer)."""
        super().on_rebalance_end()
        consumer = self._consumer
        if consumer is not None and hasattr(consumer, "release_held"):
            consumer.release_held()

    def on_webserver_init(self, web: Any) -> None:
        from projector.web.views import install_routes

        install_routes(web.web_app, self.projector)


class Projector:
    """One worker: settings, read models, Faust app, tables and engine."""

    def __init__(
        self,
        settings: Settings,
        catalog: Optional[Catalog] = None,
        partitions: Optional[int] = None,
    ) -> None:
        from projector.web.views import web_application_options

        self.settings = settings
        self.catalog = catalog if catalog is not None else load_catalog()
        self.schemas = Schemas.from_modules(self.catalog.modules)
        self.partitions = partitions or settings.partitions
        self.metrics = Metrics()
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
            web_application_options=web_application_options(self),
            web_tables_enabled=False,
            web_router_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
            web_metrics_enabled=False,
            topic_partitions=self.partitions,
            topic_replication_factor=settings.replication_factor,
            producer_acks=-1,
            producer_max_batch_size=512 * 1024,
            # A worker killed with kill -9 holds its partitions until its session
            # times out; Faust's 60 s default is a long outage.
            broker_session_timeout=20.0,
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
            # projector creates every topic before Faust starts (projector.topics), with
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
        self.commands_topic = topic(commands_topic_name(settings), internal=True)
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

        for model in self.catalog.models:
            table(model.name, model.description)
        table(INDEX, "projector's aggregate index: versions, events and parked records per aggregate")
        table(COMMANDS, "the command side's answers by command id, for retries")
        for d in self.catalog.derived:
            table(d.name, d.description)
            table(members_table(d), f"members of {d.name} and their last contributions")
        self.tables = tables
        self.store = FaustStore(tables)
        # The control table: every worker reads the whole control topic.
        self.control = ControlState(self.catalog.control_settings)
        self.control_table = self.app.tables.add(
            ControlTable(self.app, topic=settings.control_topic, state=self.control)
        )
        self.app.task(self._capture_control_end)
        self.app.global_appliers = {settings.control_topic: self.control_table.apply_message}
        self.gap_filler = GapFiller(settings, self.control, self._control_position)
        #: Requests parked until a row changes (read-your-writes), by (table, partition, key).
        self.row_waiters: dict[tuple[str, int, bytes], set[asyncio.Future]] = {}
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.recovery_progress = RecoveryProgress(self.app.tables.recovery)
        self._check_restore_offsets()
        keep_changelog_records_on_resume(self.app)
        for t in tables.values():
            self.recovery_progress.count(t)
        #: The writer's catch-up gate, per partition of the events topic: the
        #: end it must fold to before deciding (set at the first command after
        #: an assignment), the partitions it has caught up on, and the last
        #: offset folded since the assignment.
        self.writer_targets: dict[int, int] = {}
        self.writer_open: set[int] = set()
        self.folded_offsets: dict[int, int] = {}
        #: Requests waiting for a command's answer, by command id.
        self.command_waiters: dict[str, set[asyncio.Future]] = {}
        self.engine = Engine(
            self.catalog,
            self.store,
            partitions=self.partitions,
            deadletter_topic=settings.deadletter_topic,
            repartition_topics={name: t.get_topic_name() for name, t in self.repartition_topics.items()},
            metrics=self.metrics,
            schemas=self.schemas,
            control=self.control.entries,
        )
        self.app.batch_handlers = {
            self.events_topic.get_topic_name(): self._on_events,
            self.commands_topic.get_topic_name(): self._on_events,
            **{t.get_topic_name(): self._on_derived for t in self.repartition_topics.values()},
            # Last: a fetch's events are folded before its commands are decided.
            self.command_topic.get_topic_name(): self._on_commands,
        }

    # --- batch handlers ----------------------------------------------------------

    async def _on_events(self, messages: Sequence[Any]) -> None:
        commands_topic = self.commands_topic.get_topic_name()
        records = [m for m in messages if m.topic != commands_topic]
        commands = [m for m in messages if m.topic == commands_topic]
        if records and not self.metrics.first_record_time:
            self.metrics.first_record_time = time.time()
        for m in records:  # how far each partition is folded, for the writer's catch-up gate
            if m.offset > self.folded_offsets.get(m.partition, -1):
                self.folded_offsets[m.partition] = m.offset
        started = time.perf_counter()
        # Let HTTP requests in between steps: a large batch takes long to fold.
        slice_ = TimeSlice()
        plan = await slice_.run(self.engine.plan_steps(records, commands))
        self.metrics.phase_seconds["plan"] += time.perf_counter() - started - slice_.paused
        await self._execute(plan, slice_)

    async def _on_derived(self, messages: Sequence[Any]) -> None:
        started = time.perf_counter()
        slice_ = TimeSlice()
        plan = await slice_.run(self.engine.plan_derived_steps(messages))
        self.metrics.phase_seconds["plan_derived"] += time.perf_counter() - started - slice_.paused
        await self._execute(plan, slice_)

    async def _on_commands(self, messages: Sequence[Any]) -> None:
        """Decide a fetch's commands as the writer of their partitions, then answer them."""
        for partition in {m.partition for m in messages}:
            await self._check_writer_gate(partition)
        started = time.perf_counter()
        slice_ = TimeSlice()
        control = self.control
        plan, answers = await slice_.run(decide_steps(
            self.engine, self.catalog, messages,
            events_topic=self.events_topic.get_topic_name(),
            settings=control.settings_view(),
            enabled=control.commands_enabled,
            ready=self.writer_open.__contains__,
        ))
        self.metrics.phase_seconds["decide"] += time.perf_counter() - started - slice_.paused
        await self._execute(plan, slice_)
        self._deliver_answers(answers)

    async def _check_writer_gate(self, partition: int) -> None:
        """Open the writer's gate for ``partition`` once it has folded every event the partition held.

        The end to reach is taken at the first command after an assignment.
        Until the fold gets there, commands of the partition are answered
        ``not_ready`` and sent again by the worker that took them.
        """
        if partition in self.writer_open:
            return
        tp = TP(self.events_topic.get_topic_name(), partition)
        consumer = self.app.consumer
        target = self.writer_targets.get(partition)
        if target is None:
            try:
                target = (await consumer.highwaters(tp)).get(tp)
            except Exception as exc:  # a rebalance under way, or the broker away: try at the next command
                log.info("writer of partition %d: cannot read the events topic's end yet: %r", partition, exc)
                return
            if target is None:
                return
            self.writer_targets[partition] = target
        folded = self.folded_offsets.get(partition)
        if folded is not None:
            next_offset = folded + 1
        else:
            # Nothing delivered since the assignment: Faust's read offset is
            # still where it sought to (the committed offset, the next to read).
            next_offset = consumer._read_offset.get(tp) or 0
        if next_offset >= target:
            self.writer_open.add(partition)
            log.info("writer of partition %d: caught up with the events topic (offset %d); deciding commands",
                     partition, target)

    def _deliver_answers(self, answers: Sequence[Answer]) -> None:
        """Hand each answer to the request waiting for it: here, or on the worker that took the command."""
        remote: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for answer in answers:
            if answer.reply_to is None or answer.reply_to == self.settings.url:
                self.resolve_command(answer.command_id, answer.status, answer.body)
            else:
                remote[answer.reply_to].append(
                    {"command_id": answer.command_id, "status": answer.status, "body": answer.body})
        for url, items in remote.items():
            self.app.add_future(self._post_answers(url, items))

    async def _post_answers(self, url: str, items: list[dict[str, Any]]) -> None:
        from projector.web.views import post_internal

        try:
            await post_internal(self, url, "/internal/command-answers", items)
        except Exception as exc:  # that worker is gone: its clients retry with their command ids
            log.warning("could not deliver %d command answers to %s: %r", len(items), url, exc)

    def resolve_command(self, command_id: str, status: int, body: dict[str, Any]) -> None:
        for waiter in self.command_waiters.pop(command_id, ()):
            if not waiter.done():
                waiter.set_result((status, body))

    async def submit_command(self, command: dict[str, Any], timeout: float) -> tuple[int, dict[str, Any]]:
        """Put a checked command on the command topic and wait for its writer's answer.

        A writer that is still catching up answers ``not_ready``: the command
        goes out again until the deadline. On timeout the answer is 504; the
        command may still be decided, and the same command id tells later.
        """
        from projector.core.partitioning import partition_for
        from projector.core.commands import encode_command

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        command_id = command["command_id"]
        key = command["aggregate_id"].encode("utf-8")
        partition = partition_for(key, self.partitions)
        value = encode_command(command, self.settings.url)
        topic = self.command_topic.get_topic_name()
        while True:
            waiter = loop.create_future()
            self.command_waiters.setdefault(command_id, set()).add(waiter)
            try:
                await self.produce(topic, key, value, partition, max(0.001, deadline - loop.time()))
                status, body = await asyncio.wait_for(waiter, max(0.001, deadline - loop.time()))
            except asyncio.TimeoutError:
                return 504, {"error": "timeout", "command_id": command_id,
                             "detail": "no answer from the aggregate's writer in time: the outcome is unknown. "
                                       "Send the same command_id again to learn it (it is never applied twice)"}
            finally:
                waiters = self.command_waiters.get(command_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self.command_waiters[command_id]
            if status == 503 and body.get("error") == "not_ready" and loop.time() + 0.05 < deadline:
                await asyncio.sleep(0.05)
                continue
            return status, body

    async def _execute(self, plan: Plan, slice_: TimeSlice) -> None:
        """Send the plan to Kafka and wait for it, then write RocksDB.

        Three rounds, each waiting for Kafka before the next: the messages
        (repartition messages, dead letters), then the read-model rows, then
        the guard tables (the aggregate index and the members tables) that say
        what was applied. Whatever a crash leaves half-sent, a later round is
        never in Kafka without the earlier ones: rows never without the
        messages they caused (a replay that finds a row up to date sends
        nothing again), the index never without its rows. See ``Engine.guard_tables``.
        """
        started = time.perf_counter()
        guards = self.engine.guard_tables
        first = {slot: items for slot, items in plan.writes.items() if slot[0] not in guards}
        second = {slot: items for slot, items in plan.writes.items() if slot[0] in guards}
        offsets: dict[tuple[str, int], int] = {}
        if plan.appends:
            # The command side's events: in the events topic before any row,
            # index entry or answer that counts them as applied.
            await self._send_and_wait({}, plan.appends, offsets, slice_)
        if plan.sends:
            await self._send_and_wait({}, plan.sends, offsets, slice_)
        await self._send_and_wait(first, [], offsets, slice_)
        await self._send_and_wait(second, [], offsets, slice_)
        acked = time.perf_counter()
        for writes in (first, second):
            for (table, partition), items in writes.items():
                self.store.write(table, partition, items, offsets.get((table, partition)))
                await slice_.check()  # let requests in between RocksDB writes
        if self.row_waiters:
            self._wake_rows(plan.writes)
        done = time.perf_counter()
        self.metrics.phase_seconds["rocksdb"] += done - acked
        self.metrics.observe_batch(done - started)

    async def _send_and_wait(
        self, writes: dict[tuple[str, int], dict[bytes, Optional[bytes]]], sends: Sequence[Any],
        offsets: dict[tuple[str, int], int], slice_: TimeSlice,
    ) -> None:
        """Send changelog records for ``writes`` and the ``sends``; wait until Kafka has them all.

        Records go out in aiokafka batches per topic and partition: one append
        per record instead of one send() with its futures and metadata checks.
        ``offsets`` gets the changelog offset each table partition reaches.
        """
        started = time.perf_counter()
        producer = self.app.producer._ensure_producer()
        outgoing: dict[tuple[str, int], list[tuple[Optional[bytes], Optional[bytes], list]]] = defaultdict(list)
        changelog_of: dict[tuple[str, int], tuple[str, int]] = {}
        for (table, partition), items in writes.items():
            slot = (self.store.changelog_topic(table), partition)
            changelog_of[slot] = (table, partition)
            outgoing[slot].extend((key, value, []) for key, value in items.items())
        unpartitioned = []
        for out in sends:
            if out.partition is None:
                unpartitioned.append(out)
            else:
                outgoing[(out.topic, out.partition)].append((out.key, out.value, out.headers))
        pending: list[tuple[tuple[str, int], int, Any]] = []
        for (topic, partition), records in outgoing.items():
            batch = producer.create_batch()
            for key, value, headers in records:
                await slice_.check()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    pending.append(((topic, partition), batch.record_count(), await producer.send_batch(batch, topic, partition=partition)))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a record for {topic} does not fit in an empty producer batch")
            pending.append(((topic, partition), batch.record_count(), await producer.send_batch(batch, topic, partition=partition)))
        for out in unpartitioned:
            fut = await producer.send(out.topic, value=out.value, key=out.key, headers=out.headers or None)
            pending.append(((out.topic, -1), 1, fut))
        queued = time.perf_counter()
        self.metrics.phase_seconds["send"] += queued - started
        results = await asyncio.gather(*(fut for _, _, fut in pending))
        self.metrics.phase_seconds["await_acks"] += time.perf_counter() - queued
        for (slot, count, _), meta in zip(pending, results):
            table_slot = changelog_of.get(slot)
            if table_slot is not None:
                offsets[table_slot] = max(offsets.get(table_slot, -1), meta.offset + count - 1)

    async def _probe_loop_lag(self) -> None:
        """Measure how late the event loop wakes a sleeping task (projector_event_loop_lag_seconds)."""
        interval = LAG_PROBE_INTERVAL
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval)
            self.metrics.observe_lag(max(0.0, time.perf_counter() - started - interval))

    # --- read-your-writes: requests parked until a row changes -----------------------

    def park_row(self, table: str, partition: int, key: bytes) -> asyncio.Future:
        """A future that completes the next time this worker writes ``key`` (or loses partitions)."""
        waiter = asyncio.get_running_loop().create_future()
        self.row_waiters.setdefault((table, partition, key), set()).add(waiter)
        return waiter

    def unpark_row(self, table: str, partition: int, key: bytes, waiter: asyncio.Future) -> None:
        slot = (table, partition, key)
        waiters = self.row_waiters.get(slot)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self.row_waiters[slot]

    @property
    def parked_requests(self) -> int:
        return sum(len(w) for w in self.row_waiters.values())

    def _wake_rows(self, writes: dict[tuple[str, int], dict[bytes, Optional[bytes]]]) -> None:
        for slot in [s for s in self.row_waiters if s[2] in writes.get((s[0], s[1]), ())]:
            for waiter in self.row_waiters.pop(slot):
                if not waiter.done():
                    waiter.set_result(None)

    async def _on_revoked(self, app: Any, revoked: Any, **kwargs: Any) -> None:
        """Wake every parked request: the row may now be written by another worker.

        The writer's catch-up gate starts over: whichever partitions this
        worker gets next, it folds each to its end before deciding commands.
        """
        self.writer_targets.clear()
        self.writer_open.clear()
        self.folded_offsets.clear()
        waiters, self.row_waiters = self.row_waiters, {}
        for slot in waiters.values():
            for waiter in slot:
                if not waiter.done():
                    waiter.set_result(None)

    # --- the control topic --------------------------------------------------------

    async def _capture_control_end(self) -> None:
        """Note where the control topic ends at startup: the worker is not ready before it has read that far."""
        self.control.target = await records_end(self.settings, self.settings.control_topic)
        log.info(
            "control topic %s: %d records to read before this worker is ready",
            self.settings.control_topic, self.control.target,
        )

    async def _control_position(self) -> Optional[int]:
        """This worker's consumer position on the control partition."""
        return await self.app.consumer.position(TP(self.settings.control_topic, 0))

    async def _unstick_control_recovery(self) -> None:
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
        tp = TP(self.settings.control_topic, 0)
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
                position = await self._control_position()
            except Exception:  # not assigned (yet), or a rebalance under way
                continue
            if position is None or position <= highwater:
                continue  # still reading
            end = await records_end(self.settings, self.settings.control_topic)
            if self.control.offset + 1 >= end and recovery.active_offsets.get(tp, -1) < highwater:
                log.info(
                    "control table holds the control topic to its last record (offset %d); "
                    "its recovery is complete", end - 1,
                )
                recovery.active_offsets[tp] = highwater

    async def write_control(self, key: str, value: Any, timeout: float = KAFKA_WRITE_TIMEOUT) -> int:
        """Write one control entry (``None``: delete it); returns the record's offset.

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

    def _check_restore_offsets(self) -> None:
        """Rebuild a table partition whose local offset does not fit its changelog, instead of trusting it.

        Faust restores a partition from the offset stored with it in RocksDB.
        That offset must lie within the changelog: at least its first
        record minus one, at most its last record. Past the end (the
        changelog was deleted and created again), Faust would keep rows the
        changelog no longer has; before the start (retention deleted the
        records that followed it), it would silently skip them. In both
        cases the worker says so and rebuilds the partition from the
        changelog's first record.
        """
        recovery = self.app.tables.recovery
        build = recovery._build_offsets
        by_topic = {t.changelog_topic.get_topic_name(): name for name, t in self.tables.items()}

        async def checked(consumer: Any, tps: Any, destination: Any, title: str) -> None:
            stored = {tp: destination.get(tp) for tp in tps if destination.get(tp) is not None}
            if stored:
                try:
                    earliest = await consumer.earliest_offsets(*stored)
                    highwaters = await consumer.highwaters(*stored)
                except Exception as exc:  # keep Faust's own behaviour if the broker cannot say
                    log.warning("cannot check the stored changelog offsets: %r", exc)
                    earliest, highwaters = {}, {}
                for tp, offset in stored.items():
                    first, end = earliest.get(tp), highwaters.get(tp)
                    table = by_topic.get(tp.topic)
                    if first is None or end is None or table is None:
                        continue
                    if offset >= end or offset < first - 1:
                        why = (f"past the changelog's end ({end}): the changelog was deleted or replaced"
                               if offset >= end else
                               f"before the changelog's first record ({first}): records after it were deleted "
                               "(retention)")
                        deleted = self.store.clear_partition(table, tp.partition)
                        log.error(
                            "%s partition %d: the local state is at changelog offset %d, %s. Rebuilding it "
                            "from the changelog's first record (%d local rows dropped).",
                            table, tp.partition, offset, why, deleted,
                        )
                        destination[tp] = None
            await build(consumer, tps, destination, title)

        recovery._build_offsets = checked

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
            except Exception:  # not fetched yet, or revoked meanwhile
                highwater = None
            if highwater is None:
                continue
            read = consumer._read_offset.get(tp)
            out.append((tp.topic, tp.partition, max(0, highwater - (read + 1 if read is not None else 0))))
        return out

    def model(self, name: str) -> Any:
        return self.catalog.get(name)

    def owns(self, partition: int) -> bool:
        """True when this worker actively processes ``partition`` of the events topic."""
        # The assignor keeps the set of active partitions from its last
        # assignment; assigned_actives() would build a new set on every call.
        actives = getattr(self.app.assignor, "_active_tps", None)
        if actives is None:
            actives = self.app.assignor.assigned_actives()
        return TP(self.settings.events_topic, partition) in actives

    def owner_url(self, table: str, partition: int) -> Optional[str]:
        """The web URL of the worker that owns ``partition`` of ``table``, if known."""
        for url, topics in self.app.router.table_metadata(table).items():
            for partitions in topics.values():
                if partition in partitions:
                    return str(url)
        return None
