"""What every contestant of ``projector bench`` but projector shares: the fold and the files.

One event into one accounts row ``{"version", "value"}`` (CONTRACT §4), in
plain Python with no Kafka or Faust import, so the naive Faust agent, Quix
Streams and the raw clients all do the same work per event. An event at or
below the row's version is a duplicate (see :func:`step`); an event that does
not apply raises :class:`Skip`.

Contestants without HTTP note their first record in a ready file
(:func:`note_first_record`) and leave their rows in a state file when stopped
(:func:`write_state`); ``projector bench`` reads both, and passes their paths
as ``--state-file`` and ``--ready-file`` (:func:`add_file_arguments`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Optional

import orjson


class Skip(ValueError):
    """An event that does not apply to the row as it stands."""


def fold(row: Optional[dict[str, Any]], env: dict[str, Any]) -> dict[str, Any]:
    """One event into one ``{"version", "value"}`` row (accounts semantics)."""
    etype, data, version = env["type"], env.get("data") or {}, env["version"]
    value = row["value"] if row is not None else None
    if etype == "AccountOpened":
        if value is not None:
            raise Skip("already open")
        value = {"owner": data["owner"], "currency": data["currency"], "balance": 0,
                 "status": "open", "deposits": 0, "withdrawals": 0}
    elif etype in ("MoneyDeposited", "MoneyWithdrawn", "AccountClosed"):
        if value is None or value["status"] != "open":
            raise Skip(f"{etype} for an account that is not open")
        value = dict(value)
        if etype == "MoneyDeposited":
            value["balance"] += data["amount"]
            value["deposits"] += 1
        elif etype == "MoneyWithdrawn":
            if data["amount"] > value["balance"]:
                raise Skip("balance would go below zero")
            value["balance"] -= data["amount"]
            value["withdrawals"] += 1
        else:
            if value["balance"] != 0:
                raise Skip("closing with a non-zero balance")
            value["status"] = "closed"
    elif value is None:
        raise Skip(f"{etype} before the account was opened")
    return {"version": version, "value": value}


def step(row: Optional[dict[str, Any]], env: dict[str, Any]) -> tuple[str, Optional[dict[str, Any]]]:
    """``env`` against ``row``: ("ok", the new row), or ("duplicate" or "invalid", None)."""
    try:
        if row is not None and env["version"] <= row["version"]:
            return "duplicate", None
        return "ok", fold(row, env)
    except (Skip, KeyError, TypeError):
        return "invalid", None


def apply(rows: dict[Any, dict[str, Any]], key: Any, env: dict[str, Any]) -> str:
    """Fold ``env`` into ``rows[key]``; returns "ok", "duplicate" or "invalid"."""
    outcome, row = step(rows.get(key), env)
    if row is not None:
        rows[key] = row
    return outcome


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def note_first_record(path: Path) -> None:
    """Write the ready file: when the first record arrived (``time.time()``)."""
    _write_atomic(path, repr(time.time()).encode())


def write_state(path: Path, rows: dict[str, Any], counts: dict[str, int]) -> None:
    """Write the state file, ``{"rows": {id: row}, "counts": {...}}``, through ``PATH.tmp`` and a rename."""
    _write_atomic(path, orjson.dumps({"rows": rows, "counts": counts}))


def add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """``--state-file`` (required) and ``--ready-file``, the files of a contestant without HTTP."""
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path)
