"""Builders shared by the unit tests: valid envelopes and decoded events."""

from __future__ import annotations

from typing import Any, Optional

import orjson

from projector.core.envelope import Event, decode_record


def envelope(
    aggregate_id: str = "acc-1",
    version: int = 1,
    type: str = "AccountOpened",
    data: Optional[dict[str, Any]] = None,
    **fields: Any,
) -> dict[str, Any]:
    """A valid envelope (a JSON-ready dict); ``fields`` add or override fields."""
    if data is None:
        data = {"owner": "alice", "currency": "EUR"} if type == "AccountOpened" else {}
    env: dict[str, Any] = {
        "id": f"{aggregate_id}/{version}",
        "aggregate_id": aggregate_id,
        "aggregate_type": "account",
        "type": type,
        "version": version,
        "data": data,
    }
    env.update(fields)
    return env


def event(
    aggregate_id: str = "acc-1",
    version: int = 1,
    type: str = "AccountOpened",
    data: Optional[dict[str, Any]] = None,
    **fields: Any,
) -> Event:
    """A decoded :class:`Event`, built through the real decoder."""
    env = envelope(aggregate_id, version, type, data, **fields)
    [decoded] = decode_record(aggregate_id.encode(), orjson.dumps(env))
    return decoded


def deposit(aggregate_id: str, version: int, amount: int) -> Event:
    return event(aggregate_id, version, "MoneyDeposited", {"amount": amount})


def withdrawal(aggregate_id: str, version: int, amount: int) -> Event:
    return event(aggregate_id, version, "MoneyWithdrawn", {"amount": amount})


def opened(aggregate_id: str = "acc-1", owner: str = "alice", currency: str = "EUR") -> Event:
    return event(aggregate_id, 1, "AccountOpened", {"owner": owner, "currency": currency})


def closed(aggregate_id: str, version: int) -> Event:
    return event(aggregate_id, version, "AccountClosed", {})
