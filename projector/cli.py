"""The ``projector`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from projector.runtime.config import Settings
from projector.runtime.errors import ConfigError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"projector: configuration error: {exc}")


def cmd_worker(args: argparse.Namespace) -> None:
    from projector.worker import run_worker

    run_worker(_settings(), args.loglevel)


def _api(method: str, path: str, body: object = None, admin: bool = False, timeout: float = 30) -> tuple[int, object]:
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
        with urllib.request.urlopen(req, timeout=timeout) as r:
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

    from projector.runtime.errors import BrokerError, TopicError
    from projector.runtime.kafka import client_options
    from projector.runtime.topics import existing_topics

    settings = _settings()
    # aiokafka logs every retry while a broker is down; the outcome is what matters here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    value = sys.stdin.buffer.read() if args.value == "-" else args.value.encode("utf-8")

    async def send() -> object:
        # A producer would wait for a missing topic until its timeout: say so at once instead.
        if settings.events_topic not in await existing_topics(settings, [settings.events_topic]):
            raise TopicError(f"the topic does not exist (PROJECTOR_EVENTS_TOPIC={settings.events_topic!r}); "
                             "a worker or `projector produce-demo` creates it")
        producer = AIOKafkaProducer(**client_options(settings), acks="all")
        await producer.start()
        try:
            return await producer.send_and_wait(settings.events_topic, value, key=args.key.encode("utf-8"))
        finally:
            await producer.stop()

    try:
        meta = asyncio.run(send())
    except (KafkaError, BrokerError, TopicError) as exc:
        sys.exit(f"projector: sending to {settings.events_topic} at {settings.broker} failed: {exc}")
    print(f"{settings.events_topic}/{meta.partition}/{meta.offset}")


def _only_aggregate_type() -> str:
    """The aggregate type of the one read model in tables/ that takes commands, or exit saying to choose."""
    from projector.core.catalog import load_catalog
    from projector.core.errors import ReadModelError

    try:
        types = sorted(load_catalog().deciders)
    except ReadModelError as exc:
        sys.exit(f"projector: {exc}")
    if len(types) != 1:
        sys.exit(f"projector: give --aggregate-type, one of: {', '.join(types) or 'none (no read model takes commands)'}")
    return types[0]


def cmd_command(args: argparse.Namespace) -> None:
    """POST one command to this machine's worker and print the answer (exit 1 unless 200)."""
    import orjson

    raw = sys.stdin.buffer.read() if args.data == "-" else args.data.encode("utf-8")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        sys.exit(f"projector: --data is not JSON: {exc}")
    aggregate_type = args.aggregate_type or _only_aggregate_type()
    body: dict = {"aggregate_type": aggregate_type, "aggregate_id": args.aggregate_id,
                  "type": args.type, "data": data}
    if args.command_id:
        body["command_id"] = args.command_id
    if args.expected_version is not None:
        body["expected_version"] = args.expected_version
    _print_answer(*_api("POST", "/commands", body, timeout=40))


def cmd_control(args: argparse.Namespace) -> None:
    """Read or write the control table: through this machine's worker, or straight on Kafka with --direct."""
    from urllib.parse import quote

    import orjson

    from projector.core.catalog import load_catalog
    from projector.core.control import ControlState
    from projector.core.errors import ControlError, ReadModelError

    action = args.action
    value = None
    if getattr(args, "wait", 0) and not 0 < args.wait <= 30:
        sys.exit(f"projector: --wait must be between 0 and 30 seconds, got {args.wait}")
    if action == "set":
        raw = sys.stdin.buffer.read() if args.value == "-" else args.value.encode("utf-8")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            sys.exit(f"projector: VALUE must be JSON (e.g. false, 500, '\"text\"', null), got {raw[:80]!r}")
    if action in ("set", "delete"):
        try:
            ControlState(load_catalog().control_settings).check_entry(args.key, value)
        except (ControlError, ReadModelError) as exc:
            sys.exit(f"projector: {exc}")
    if args.direct:
        _control_direct(args, value)
        return
    if action == "list":
        _print_answer(*_api("GET", "/control"))
    elif action == "get":
        _print_answer(*_api("GET", f"/control/{quote(args.key, safe='')}"))
    else:
        path = f"/control/{quote(args.key, safe='')}"
        if value is None:  # set KEY null is a delete (CONTRACT §3)
            status, body = _api("DELETE", path, admin=True)
        else:
            status, body = _api("PUT", path, value, admin=True)
        if status == 202 and args.wait:
            offset = body["offset"]
            waited, applied = _api(
                "GET", f"/control?min_offset={offset}&timeout_ms={int(args.wait * 1000)}", timeout=args.wait + 10
            )
            if waited != 200:
                print(f"projector: written, but the worker had not applied offset {offset} "
                      f"after {args.wait:g}s: {applied}", file=sys.stderr)
                _print_answer(504, body)
        _print_answer(status, body)


def _control_direct(args: argparse.Namespace, value: object) -> None:
    from aiokafka.errors import KafkaError

    from projector.runtime.control_table import read_control_topic, write_control_topic
    from projector.runtime.errors import BrokerError, TopicError
    from projector.runtime.topics import base_topics, ensure_topics, existing_topics

    settings = _settings()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def run() -> tuple[int, object]:
        if args.action in ("set", "delete"):
            await ensure_topics(settings, [s for s in base_topics(settings) if s.name == settings.control_topic])
        elif settings.control_topic not in await existing_topics(settings, [settings.control_topic]):
            raise TopicError(f"the topic does not exist (PROJECTOR_CONTROL_TOPIC={settings.control_topic!r})")
        if args.action in ("set", "delete"):
            offset = await write_control_topic(settings, args.key, value)
            return 202, {"key": args.key, "offset": offset}
        state = await read_control_topic(settings)
        if args.action == "list":
            return 200, state.snapshot()
        if args.key not in state.entries:
            return 404, {"error": "not_found", "key": args.key, "offset": state.offset}
        return 200, {"key": args.key, "value": state.entries[args.key], "offset": state.offset}

    try:
        _print_answer(*asyncio.run(run()))
    except (KafkaError, BrokerError, TopicError, TimeoutError) as exc:
        sys.exit(f"projector: control topic {settings.control_topic} at {settings.broker}: {exc}")


def cmd_verify(args: argparse.Namespace) -> None:
    from projector.verify import main as verify_main

    verify_main(_settings(), args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="projector", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run one worker (configured by PROJECTOR_* variables)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    from projector.demo.cli import add_commands as add_demo_commands

    add_demo_commands(sub, _settings)

    from projector.bench import compare as bench

    p = sub.add_parser("bench", help="end-to-end throughput: projector against a naive Faust agent on one topic")
    bench.add_arguments(p)
    p.set_defaults(func=bench.cmd_bench)

    from projector.bench import lookups as bench_lookups

    p = sub.add_parser("bench-lookups", help="key-lookup latency (local, forwarded) while two workers fold a backlog")
    bench_lookups.add_arguments(p)
    p.set_defaults(func=bench_lookups.cmd_bench_lookups)

    from projector.bench import indexes as bench_index

    p = sub.add_parser("bench-index", help="secondary-index lookup latency (local, forwarded) on two workers")
    bench_index.add_arguments(p)
    p.set_defaults(func=bench_index.cmd_bench_index)

    from projector.bench import scale as bench_scale

    p = sub.add_parser("bench-scale", help="throughput with 1, 2, 4 workers; recovery; kill -9; rebalance pause")
    bench_scale.add_arguments(p)
    p.set_defaults(func=bench_scale.cmd_bench_scale)

    from projector.bench import build as bench_build

    p = sub.add_parser("bench-build", help="the live fold's throughput while a new read-model version builds beside it")
    bench_build.add_arguments(p)
    p.set_defaults(func=bench_build.cmd_bench_build)

    from projector.bench import commands as bench_commands

    p = sub.add_parser("bench-commands", help="command round trip (POST /commands to 200) and how soon its row shows it")
    bench_commands.add_arguments(p)
    p.set_defaults(func=bench_commands.cmd_bench_commands)

    p = sub.add_parser("send", help="produce one record (key, JSON value) to the events topic")
    p.add_argument("key", help="the record key: the aggregate id")
    p.add_argument("value", help="the record value, e.g. one JSON envelope; - reads it from stdin")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("command", help="send one command (POST /commands) through this machine's worker",
                       description="Prints the writer's answer: the new version and events, or the error.")
    p.add_argument("type", help="the command type (GET /openapi.json lists each aggregate type's commands)")
    p.add_argument("aggregate_id")
    p.add_argument("--data", default="{}", help="the command's data as JSON, e.g. '{\"amount\": 500}'; - reads stdin")
    p.add_argument("--aggregate-type", default=None,
                   help="the aggregate type (default: the only one that takes commands, if there is one)")
    p.add_argument("--expected-version", type=int, default=None, metavar="N",
                   help="only if the aggregate is at version N (else 409 version_conflict)")
    p.add_argument("--command-id", default=None, help="an idempotency key: the same id again gives the first answer")
    p.set_defaults(func=cmd_command)

    p = sub.add_parser("release", help="release a parked aggregate (needs PROJECTOR_ADMIN_TOKEN if the worker has one)")
    p.add_argument("aggregate_id")
    p.add_argument("--skip-to", type=int, default=None, metavar="VERSION",
                   help="give up on the missing versions below VERSION and go on from it")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser(
        "control",
        help="read or write the control table (CONTRACT §3), through the worker or, with --direct, on Kafka",
        description="Writes need PROJECTOR_ADMIN_TOKEN if the worker has one. --direct reads or writes "
        "the control topic itself and needs no worker.",
    )
    csub = p.add_subparsers(dest="action", required=True)
    for name, help_ in (
        ("list", "every entry, and the offset applied"),
        ("get", "one entry"),
        ("set", "write an entry: KEY and a JSON VALUE (null deletes)"),
        ("delete", "delete an entry (a tombstone)"),
    ):
        c = csub.add_parser(name, help=help_)
        if name != "list":
            c.add_argument("key")
        if name == "set":
            c.add_argument("value", help="a JSON value, e.g. false, 500 or '\"text\"'; - reads it from stdin")
        c.add_argument("--direct", action="store_true", help="use the Kafka topic itself, not a worker")
        if name in ("set", "delete"):
            c.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                           help="then wait until the worker has applied it")
        c.set_defaults(func=cmd_control)

    p = sub.add_parser(
        "verify",
        help="compare every copy (active, standbys) of each partition of a table; exit 0 only when all are equal",
        description="Asks every worker of the app id for GET /tables/TABLE/digest and compares the copies of "
        "each partition at one changelog offset. Exit status: 0 all equal, 1 some partition differs, 2 not "
        "compared (copies never at one offset within --timeout, or a worker could not be asked).",
    )
    p.add_argument("table")
    p.add_argument("--url", default=None, help="a worker of the app id (default: PROJECTOR_WEB_HOST:PROJECTOR_WEB_PORT)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the copies to reach one offset (default 30)")
    p.add_argument("--rebuild", action="store_true",
                   help="also fold the events topic from its start into a scratch copy and compare the active copies")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("deadletters", help="list the newest dead letters")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_deadletters)

    args = parser.parse_args(argv)
    args.func(args)
