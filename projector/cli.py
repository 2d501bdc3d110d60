"""The ``projector`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from projector.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"projector: configuration error: {exc}")


def cmd_worker(args: argparse.Namespace) -> None:
    from projector.app import Projector
    from projector.readmodels import ReadModelError, load_catalog
    from projector.schemas import SchemaError, Schemas
    from projector.topics import TopicError, ensure_topics, projector_topics

    settings = _settings()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    try:
        catalog = load_catalog()
        Schemas.from_modules(catalog.modules)
    except (ReadModelError, SchemaError) as exc:
        sys.exit(f"projector: {exc}")
    try:
        partitions = asyncio.run(ensure_topics(settings))[settings.events_topic]
        # Internal topics must exist before Faust joins the group, or its first
        # assignment leaves them out; they share the events topic's partitions.
        derived = [d.name for d in catalog.derived]
        asyncio.run(ensure_topics(settings, projector_topics(settings, derived, partitions)))
    except TopicError as exc:
        sys.exit(f"projector: {exc}")
    projector = Projector(settings, catalog, partitions=partitions)
    from faust.worker import Worker

    worker = Worker(projector.app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def cmd_produce_demo(args: argparse.Namespace) -> None:
    from projector.demo import generate_histories, produce_events
    from projector.topics import TopicError, ensure_topics

    settings = _settings()
    try:
        asyncio.run(ensure_topics(settings))
        envelopes = list(generate_histories(args.accounts, args.events, args.seed))
        n = asyncio.run(produce_events(settings, envelopes))
    except (TopicError, ValueError) as exc:
        sys.exit(f"projector: {exc}")
    print(f"produced {n} events for {args.accounts} accounts to {settings.events_topic}")


def _api(method: str, path: str, body: object = None, admin: bool = False) -> tuple[int, object]:
    """One request to this machine's worker (PROJECTOR_WEB_HOST/PORT), with the configured token."""
    import urllib.error
    import urllib.request

    import orjson

    settings = _settings()
    token = (settings.admin_token if admin else None) or settings.api_token or settings.admin_token
    req = urllib.request.Request(
        settings.url + path, data=orjson.dumps(body) if body is not None else None, method=method
    )
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, orjson.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return e.code, raw.decode("utf-8", "replace")
    except OSError as exc:
        sys.exit(f"projector: no worker answers at {settings.url}: {exc}")


def _print_answer(status: int, body: object) -> None:
    import orjson

    print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    if status >= 400:
        sys.exit(1)


def cmd_release(args: argparse.Namespace) -> None:
    from urllib.parse import quote

    body = {} if args.skip_to is None else {"skip_to": args.skip_to}
    _print_answer(*_api("POST", f"/aggregates/{quote(args.aggregate_id, safe='')}/release", body, admin=True))


def cmd_deadletters(args: argparse.Namespace) -> None:
    _print_answer(*_api("GET", f"/deadletters?limit={args.limit}"))


def cmd_send(args: argparse.Namespace) -> None:
    """Produce one record to the events topic, as any Kafka producer would."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    settings = _settings()
    # aiokafka logs every retry while a broker is down; the outcome is what matters here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    value = sys.stdin.buffer.read() if args.value == "-" else args.value.encode("utf-8")

    async def send() -> object:
        producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.bootstrap_servers), acks="all")
        await producer.start()
        try:
            return await producer.send_and_wait(settings.events_topic, value, key=args.key.encode("utf-8"))
        finally:
            await producer.stop()

    try:
        meta = asyncio.run(send())
    except KafkaError as exc:
        sys.exit(f"projector: sending to {settings.events_topic} at {settings.broker} failed: {exc}")
    print(f"{settings.events_topic}/{meta.partition}/{meta.offset}")


def cmd_demo(args: argparse.Namespace) -> None:
    from projector.rundemo import run_demo

    sys.exit(run_demo(_settings(), accounts=args.accounts, events=args.events, seed=args.seed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="projector", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run one worker (configured by PROJECTOR_* variables)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    for name, func, help_ in (
        ("produce-demo", cmd_produce_demo, "produce demo account histories to the events topic"),
        ("demo", cmd_demo, "start the broker (if needed) and a worker, produce demo data, serve until Ctrl-C"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--accounts", type=int, default=300)
        p.add_argument("--events", type=int, default=5000)
        p.add_argument("--seed", type=int, default=42)
        p.set_defaults(func=func)

    from projector import bench

    p = sub.add_parser("bench", help="end-to-end throughput: projector against a naive Faust agent on one topic")
    bench.add_arguments(p)
    p.set_defaults(func=bench.cmd_bench)

    p = sub.add_parser("send", help="produce one record (key, JSON value) to the events topic")
    p.add_argument("key", help="the record key: the aggregate id")
    p.add_argument("value", help="the record value, e.g. one JSON envelope; - reads it from stdin")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("release", help="release a parked aggregate (needs PROJECTOR_ADMIN_TOKEN if the worker has one)")
    p.add_argument("aggregate_id")
    p.add_argument("--skip-to", type=int, default=None, metavar="VERSION",
                   help="give up on the missing versions below VERSION and go on from it")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("deadletters", help="list the newest dead letters")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_deadletters)

    args = parser.parse_args(argv)
    args.func(args)
