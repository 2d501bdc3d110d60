"""The Quix Streams contestant for ``projector bench``, with its RocksDB state and changelog.

This is what one would write with Quix Streams and no projector: one
StreamingDataFrame over the events topic and one stateful ``update`` that, for
every event, reads the account's row from Quix's RocksDB store with
``state.get("row")``, folds the event into it (:func:`projector.bench.fold.fold`,
the fold every contestant but projector uses) and writes it back with
``state.set("row", ...)``. Quix batches the writes of a checkpoint, flushes
them to RocksDB and produces them to its changelog topic when it commits:
every 1 s or every 10,000 messages, projector's cadence. There is no output
topic.

The rows have projector's shape, ``{"version", "value"}``, with the same
accounts semantics (CONTRACT §4): an event at or below the row's version is a
duplicate and skipped; an event that does not apply is counted and skipped.

Run as a subprocess by ``projector bench``::

    python -m projector.bench.quix --broker 127.0.0.1:9092 --topic EVENTS \\
        --group GROUP --data-dir DIR --state-file PATH [--ready-file PATH]

Quix Streams and confluent-kafka are the ``bench`` extra, not dependencies of
projector: they are imported only once :func:`main` runs, and a missing one
ends it with a message that says what to install
(:mod:`projector.bench.extras`).

The events topic must exist; Quix neither creates nor reconfigures it. Quix
creates one topic of its own, the store's changelog
``changelog__<GROUP>--<EVENTS>--default`` (compacted, as many partitions as
EVENTS), so every topic it creates starts with ``changelog__<GROUP>--``.

``--ready-file`` is written (``time.time()`` as text) when the first record has
been processed. On SIGTERM or SIGINT Quix stops its poll loop and commits; the
final rows are then read back, read-only, from the RocksDB store Quix leaves
on disk, ``DIR/<GROUP>/default/<EVENTS>/<partition>/``, where a row's key is
``<message key>|<JSON "row">`` and its value the row as JSON. They are written
to ``--state-file`` as JSON ``{"rows": {id: row}, "counts": {"ok", "duplicate",
"invalid"}}`` (through ``PATH.tmp`` and a rename).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import orjson

from projector.bench.extras import MissingExtra, require
from projector.bench.fold import add_file_arguments, note_first_record, step, write_state
from projector.runtime.config import Settings
from projector.runtime.kafka import librdkafka_config, settings_for

if TYPE_CHECKING:
    from quixstreams import Application

ROW = "row"
COMMIT_INTERVAL = 1.0
COMMIT_EVERY = 10_000
METADATA_TIMEOUT = 15.0
#: The optional packages this contestant imports (the ``bench`` extra); only :func:`main` and what it calls import them.
EXTRAS = ("quixstreams", "confluent_kafka")


def check_topic(settings: Settings, topic: str) -> None:
    """Fail with a clear message when Kafka does not answer or ``topic`` is missing."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    brokers = ",".join(settings.bootstrap_servers)
    admin = AdminClient(librdkafka_config(settings))
    try:
        topics = admin.list_topics(timeout=METADATA_TIMEOUT).topics
    except KafkaException as exc:
        raise SystemExit(f"bench_quix: cannot reach Kafka at {brokers}: {exc.args[0]}") from exc
    if topic not in topics:
        raise SystemExit(f"bench_quix: topic {topic!r} does not exist on {brokers}")


def build_app(args: argparse.Namespace, settings: Settings, counts: dict[str, int]) -> tuple[Application, Path]:
    """The Quix app, and the directory of its store (one RocksDB per partition)."""
    from quixstreams import Application, State
    from quixstreams.kafka.configuration import ConnectionConfig
    from quixstreams.models.serializers import JSONDeserializer
    from quixstreams.state.manager import DEFAULT_STATE_STORE_NAME

    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(librdkafka_config(settings)),
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.data_dir,
        commit_interval=COMMIT_INTERVAL,
        commit_every=COMMIT_EVERY,
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, key_deserializer="bytes",
                      value_deserializer=JSONDeserializer(loads=orjson.loads))
    sdf = app.dataframe(topic)
    ready: Optional[Path] = args.ready_file

    def fold_event(env: dict[str, Any], state: State) -> None:
        nonlocal ready
        if ready is not None:
            note_first_record(ready)
            ready = None
        outcome, row = step(state.get(ROW), env)
        if row is not None:
            state.set(ROW, row)
        counts[outcome] += 1

    sdf.update(fold_event, stateful=True)
    store_dir = Path(args.data_dir).absolute() / args.group / DEFAULT_STATE_STORE_NAME / sdf.stream_id
    return app, store_dir


def read_rows(store_dir: Path) -> dict[str, Any]:
    """Every row in the RocksDB partitions under ``store_dir``, opened read-only."""
    from quixstreams.state.metadata import SEPARATOR
    from quixstreams.state.rocksdb import RocksDBOptions
    from rocksdict import AccessType, Rdict

    store_options = RocksDBOptions()
    # The tail of a row's RocksDB key: the state key, prefixed by the message key.
    row_suffix = SEPARATOR + store_options.dumps(ROW)
    rows: dict[str, Any] = {}
    options = store_options.to_options()
    for path in sorted(p for p in store_dir.iterdir() if p.is_dir()):
        cfs = {name: options for name in Rdict.list_cf(str(path), options)}
        db = Rdict(str(path), options=options, column_families=cfs, access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if key.endswith(row_suffix):
                    rows[key[: -len(row_suffix)].decode()] = store_options.loads(value)
        finally:
            db.close()
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projector.bench.quix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="[kafka://]host:port[,host:port]")
    parser.add_argument("--topic", required=True, help="the events topic; it must exist")
    parser.add_argument("--group", required=True, help="consumer group, also names the state dir and changelog")
    parser.add_argument("--data-dir", required=True)
    add_file_arguments(parser)
    args = parser.parse_args(argv)
    from projector.runtime.errors import ConfigError

    try:
        settings = settings_for(args.broker)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        require("quix", *EXTRAS)
    except MissingExtra as exc:
        sys.exit(f"bench_quix: {exc}")
    check_topic(settings, args.topic)
    counts = {"ok": 0, "duplicate": 0, "invalid": 0}
    app, store_dir = build_app(args, settings, counts)
    app.run()  # until SIGTERM or SIGINT, which Quix turns into app.stop()
    if not store_dir.is_dir():
        sys.exit(f"bench_quix: no state store at {store_dir}")
    write_state(args.state_file, read_rows(store_dir), counts)


if __name__ == "__main__":
    main()
