"""The naive baseline for ``projector bench``: a plain one-agent Faust app.

This is what one would write first with Faust and no projector: for every
event, decode it, read the account's row from a RocksDB-backed Faust table,
fold the event into it and write the row back with ``table[key] = row``. Every
event therefore costs one RocksDB read, one RocksDB write and one changelog
record; nothing is batched.

The rows have projector's shape, ``{"version", "value"}``, with the same
accounts semantics (CONTRACT §4): an event at or below the row's version is a
duplicate and skipped; an event that does not apply (no account, closed
account, balance below zero, ...) is logged, counted and skipped.

Run as a subprocess by ``projector bench``::

    python -m projector.bench.naive --broker kafka://127.0.0.1:9092 \\
        --topic EVENTS --partitions 8 --app-id bench-naive \\
        --data-dir /tmp/naive --web-port 6099

It serves ``GET /row/{key}`` (200 ``{"key", "version", "value"}``, 404
``{"error": "not_found"}``) and ``GET /readyz`` on 127.0.0.1 only. It never
imports projector's engine, tables or app, so the two stay independent.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Optional

import faust
import orjson

from projector.bench.fold import Skip, fold

log = logging.getLogger("projector.bench.naive")

TABLE = "accounts"
MIB = 1024 * 1024


def build_app(args: argparse.Namespace) -> faust.App:
    from projector.runtime.kafka import faust_credentials, settings_for

    settings = settings_for(args.broker)
    app = faust.App(
        args.app_id,
        broker=settings.faust_broker,
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=args.data_dir,
        autodiscover=False,
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=args.web_port,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        topic_partitions=args.partitions,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(
        args.topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=args.partitions,
    )
    table = app.Table(
        TABLE,
        partitions=args.partitions,
        key_type=bytes,
        value_type=bytes,
        # A fresh dict: Faust's Store pops keys out of the options it is given.
        options=dict(driver="rocksdict", block_cache_size=8 * MIB, write_buffer_size=8 * MIB),
    )
    skipped = {"duplicate": 0, "invalid": 0}

    @app.agent(topic, name="bench_naive.fold")
    async def fold_agent(stream: Any) -> None:
        async for key, raw in stream.items():
            if key is None:
                skipped["invalid"] += 1
                continue
            try:
                env = orjson.loads(raw)
                old = table.get(key)
                row = orjson.loads(old) if old is not None else None
                if row is not None and env["version"] <= row["version"]:
                    skipped["duplicate"] += 1
                    continue
                table[key] = orjson.dumps(fold(row, env))
            except (Skip, ValueError, KeyError, TypeError) as exc:
                skipped["invalid"] += 1
                log.warning("skipped a record for %r: %s", key, exc)

    def json(view: Any, body: Any, status: int = 200) -> Any:
        return view.bytes(orjson.dumps(body), content_type="application/json", status=status)

    @app.page("/row/{key}")
    async def row_page(self: Any, request: Any, key: str) -> Any:
        raw = table.get(key.encode())
        if raw is None:
            return json(self, {"error": "not_found"}, status=404)
        row = orjson.loads(raw)
        return json(self, {"key": key, "version": row["version"], "value": row["value"]})

    @app.page("/readyz")
    async def readyz_page(self: Any, request: Any) -> Any:
        if not app.tables.recovery.completed.is_set():
            return json(self, {"ready": False, "detail": "recovering tables"}, status=503)
        if app.rebalancing:
            return json(self, {"ready": False, "detail": "rebalancing"}, status=503)
        return json(self, {"ready": True, "skipped": skipped})

    return app


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projector.bench.naive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="kafka://host:port[,host:port]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True, help="must equal the topic's partition count")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    app = build_app(args)
    from faust.worker import Worker

    Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
