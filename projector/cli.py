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
    from projector.readmodels import ReadModelError, load_read_models
    from projector.topics import TopicError, ensure_topics

    settings = _settings()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    try:
        models = load_read_models()
    except ReadModelError as exc:
        sys.exit(f"projector: {exc}")
    try:
        partitions = asyncio.run(ensure_topics(settings))
    except TopicError as exc:
        sys.exit(f"projector: {exc}")
    # Tables are co-partitioned with the events topic as it really is.
    projector = Projector(settings, models, partitions=partitions[settings.events_topic])
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

    args = parser.parse_args(argv)
    args.func(args)
