"""The demo's subcommands of ``projector``: ``projector demo`` (the main job) and ``projector produce-demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Callable

from projector.runtime.config import Settings


def add_commands(sub: Any, settings: Callable[[], Settings]) -> None:
    """Register ``demo`` and ``produce-demo`` on the CLI's subparsers; ``settings()`` reads PROJECTOR_*."""

    def cmd_produce_demo(args: argparse.Namespace) -> None:
        from aiokafka.errors import KafkaError

        from projector.demo.data import generate_histories, produce_events
        from projector.runtime.errors import BrokerError, TopicError
        from projector.runtime.topics import ensure_topics

        settings_ = settings()
        try:
            asyncio.run(ensure_topics(settings_))
            envelopes = list(generate_histories(args.accounts, args.events, args.seed))
            n = asyncio.run(produce_events(settings_, envelopes))
        except (BrokerError, TopicError, KafkaError, ValueError) as exc:
            sys.exit(f"projector: {exc}")
        print(f"produced {n} events for {args.accounts} accounts to {settings_.events_topic}")

    def cmd_demo(args: argparse.Namespace) -> None:
        from projector.demo.run import run_demo

        sys.exit(run_demo(settings(), accounts=args.accounts, events=args.events, seed=args.seed))

    for name, func, help_ in (
        ("produce-demo", cmd_produce_demo, "produce demo account histories to the events topic"),
        ("demo", cmd_demo, "start the broker (if needed) and a worker, produce demo data, serve until Ctrl-C"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--accounts", type=int, default=300)
        p.add_argument("--events", type=int, default=5000)
        p.add_argument("--seed", type=int, default=42)
        p.set_defaults(func=func)
