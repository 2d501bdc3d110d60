"""Wiring: the Faust app, its read-model tables, the folding agent and the web views."""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import faust
from faust.types import TP

from projector.config import Settings
from projector.engine import Engine
from projector.metrics import Metrics
from projector.readmodels import ReadModel, load_read_models
from projector.state import TableState, rocksdb_options

log = logging.getLogger(__name__)

#: Records per fold batch, and how long a partial batch may wait.
BATCH_MAX = 2000
BATCH_WITHIN = 0.05


class ProjectorApp(faust.App):
    """A Faust app that knows its projector and mounts projector's web views."""

    projector: "Projector"

    def on_webserver_init(self, web: Any) -> None:
        from projector.web import install_routes

        install_routes(web.web_app, self.projector)


class Projector:
    """One worker: settings, read models, Faust app, tables and engine."""

    def __init__(
        self,
        settings: Settings,
        models: Optional[Sequence[ReadModel]] = None,
        partitions: Optional[int] = None,
    ) -> None:
        from projector.web import web_application_options

        self.settings = settings
        self.models = list(models) if models is not None else load_read_models()
        self.partitions = partitions or settings.partitions
        self.metrics = Metrics()
        self.app = ProjectorApp(
            settings.app_id,
            broker=settings.faust_broker,
            store="rocksdb://",
            datadir=str(settings.data_dir),
            autodiscover=False,
            web_enabled=True,
            web_bind=settings.web_host,
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
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
        )
        self.app.projector = self
        self.events_topic = self.app.topic(
            settings.events_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.partitions,
        )
        self.tables: dict[str, TableState] = {}
        for model in self.models:
            table = self.app.Table(
                model.name,
                partitions=self.partitions,
                key_type=bytes,
                value_type=bytes,
                options=rocksdb_options(),
                help=model.description,
            )
            self.tables[model.name] = TableState(table)
        self.engine = Engine(self.models, dict(self.tables), self.metrics)
        self.app.agent(self.events_topic, name="projector.fold")(self._fold_agent)

    async def _fold_agent(self, stream: Any) -> None:
        # One batch writes up to BATCH_MAX changelog records at once; let
        # Faust's producer buffer hold them instead of warning at 100.
        self.app.producer.buffer.max_messages = 2 * BATCH_MAX
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):
            self.engine.apply_batch(event.message for event in events)

    def readiness(self) -> tuple[bool, str]:
        """Ready once the tables are recovered and no rebalance is under way."""
        if not self.app.tables.recovery.completed.is_set():
            return False, "recovering tables from their changelogs"
        if self.app.rebalancing:
            return False, "rebalancing"
        return True, "ready"

    # --- queries -----------------------------------------------------------------

    def model(self, name: str) -> Optional[ReadModel]:
        return next((m for m in self.models if m.name == name), None)

    def owns(self, partition: int) -> bool:
        """True when this worker actively processes ``partition`` of the events topic."""
        return TP(self.settings.events_topic, partition) in self.app.assignor.assigned_actives()

    def owner_url(self, table: str, partition: int) -> Optional[str]:
        """The web URL of the worker that owns ``partition`` of ``table``, if known."""
        for url, topics in self.app.router.table_metadata(table).items():
            for partitions in topics.values():
                if partition in partitions:
                    return str(url)
        return None
