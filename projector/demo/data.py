"""The demo domain's data: deterministic, valid bank-account histories (CONTRACT §4)."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import orjson
from aiokafka import AIOKafkaProducer

from projector.runtime.config import Settings
from projector.runtime.kafka import client_options

CURRENCIES = ("EUR", "USD", "GBP", "CHF")
_NAMESPACE = uuid.UUID("6f1c7c1e-2b1a-4f7e-9d57-2b9a0c1c0a11")
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def account_id(i: int) -> str:
    return f"acc-{i:06d}"


def generate_histories(accounts: int, events: int, seed: int = 42) -> Iterator[dict[str, Any]]:
    """Yield ``events`` envelopes over ``accounts`` accounts, interleaved, in a valid order.

    Every account opens first (version 1), deposits and withdraws without its
    balance going below zero, and some close at the end with a zero balance.
    The same arguments always give the same events.
    """
    if accounts < 1 or events < accounts:
        raise ValueError("need at least one account and at least one event per account")
    rng = random.Random(seed)
    owners = max(1, accounts // 4)
    budget = [events // accounts + (1 if i < events % accounts else 0) for i in range(accounts)]
    state = [{"version": 0, "balance": 0, "closing": False} for _ in range(accounts)]
    live = list(range(accounts))
    n = 0
    while live:
        slot = rng.randrange(len(live))
        i = live[slot]
        s = state[i]
        remaining = budget[i] - s["version"]
        version = s["version"] + 1
        if version == 1:
            etype = "AccountOpened"
            data: dict[str, Any] = {"owner": f"owner-{rng.randrange(owners):04d}", "currency": rng.choice(CURRENCIES)}
            s["closing"] = budget[i] >= 3 and rng.random() < 0.15
        elif s["closing"] and remaining == 1:
            etype, data = "AccountClosed", {}
        elif s["closing"] and remaining == 2 and s["balance"] > 0:
            etype, data = "MoneyWithdrawn", {"amount": s["balance"]}
        elif s["closing"] and remaining == 2:
            etype, data = "MoneyDeposited", {"amount": rng.randint(1, 50_000)}
            s["closing"] = False  # nothing left to withdraw before closing: stay open
        elif s["balance"] > 0 and rng.random() < 0.35:
            etype, data = "MoneyWithdrawn", {"amount": rng.randint(1, s["balance"])}
        else:
            etype, data = "MoneyDeposited", {"amount": rng.randint(1, 50_000)}
        if etype == "MoneyDeposited":
            s["balance"] += data["amount"]
        elif etype == "MoneyWithdrawn":
            s["balance"] -= data["amount"]
        s["version"] = version
        aid = account_id(i)
        yield {
            "id": str(uuid.uuid5(_NAMESPACE, f"{seed}/{aid}/{version}")),
            "aggregate_id": aid,
            "aggregate_type": "account",
            "type": etype,
            "version": version,
            "timestamp": (_EPOCH + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"),
            "data": data,
        }
        n += 1
        if s["version"] >= budget[i]:
            live[slot] = live[-1]
            live.pop()


async def produce_events(settings: Settings, envelopes: list[dict[str, Any]], progress: bool = False) -> int:
    """Produce envelopes to the events topic, keyed by aggregate id, in order per key."""
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        futures = []
        for env in envelopes:
            futures.append(
                await producer.send(
                    settings.events_topic, key=env["aggregate_id"].encode(), value=orjson.dumps(env)
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(envelopes)
