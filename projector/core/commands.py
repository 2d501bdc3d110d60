"""The command side: one writer per partition decides commands against state it keeps itself.

Kafka cannot append "only if the stream is still at version N". Projector
gets the same guarantee from a single writer:

- ``POST /commands`` on any worker puts the command on the command topic,
  keyed by aggregate id and partitioned like the events topic, and waits for
  the answer.
- The worker that owns partition *p* of the events topic owns partition *p*
  of the command topic too, and is the only one that decides commands for
  the aggregates of *p*. It takes them one at a time, in order, against the
  aggregate's state and version as it has them: its read-model rows and
  aggregate index, which already include every event it has appended.
- A decision's events are folded into those rows at once, in the same batch,
  so the next command sees them. Then they go to the events topic as one
  record (several events make a composite record, applied all or nothing),
  and Kafka acknowledges them before any row, index entry or answer is
  written. When they come back from the events topic they are duplicates.
- After an assignment, a writer decides nothing for *p* until it has folded
  every event that was in *p* (see :class:`projector.runtime.command_side.WriterGate`). Until then
  it answers ``not_ready`` and the receiving worker sends the command again.

Every event carries ``metadata.command_id``, and its id is derived from the
command id. Whoever folds the events (the writer as it appends them, or any
worker replaying the topic after a crash) records the command's answer under
its id in the ``_commands`` table. A command id seen before gets that answer
again, and nothing is appended. Rejections and version conflicts are recorded
too, and they are final for that id.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Mapping, Optional

import orjson

from projector.core import index as agg
from projector.core.catalog import Catalog
from projector.core.engine import (
    COMMANDS,
    HEADER_ERROR,
    INDEX,
    Batch,
    Engine,
    Pending,
    Plan,
    Send,
    expired_answers,
    get_answer,
    put_answer,
)
from projector.core.envelope import decode_record
from projector.core.errors import InvalidCommand, InvalidRecord, Rejected

log = logging.getLogger(__name__)

FIELDS = ("command_id", "aggregate_type", "aggregate_id", "type", "expected_version", "data")
MAX_ID = 256
MAX_VERSION = 2**63 - 1


@dataclass
class Answer:
    """What the writer says to a command: an HTTP status and a JSON body, for whoever waits."""

    command_id: str
    status: int
    body: dict[str, Any]
    reply_to: Optional[str] = None
    #: The stored answer of a command id seen before.
    replayed: bool = False
    #: The command's aggregate: with the command id, what the waiting request is keyed by.
    aggregate_id: str = ""


def _string(body: dict[str, Any], field: str, required: bool = True) -> Optional[str]:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidCommand(f"{field} must be a non-empty string, got {value!r}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID:
        raise InvalidCommand(f"{field} must be at most {MAX_ID} bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidCommand(f"{field} must be valid UTF-8 text") from None
    return value


def check_command(body: Any, catalog: Catalog) -> dict[str, Any]:
    """A ``POST /commands`` body, checked and normalised; :class:`InvalidCommand` says what is wrong."""
    if not isinstance(body, dict):
        raise InvalidCommand(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidCommand(f"unknown fields {unknown}; a command has {', '.join(FIELDS)}")
    command_id = _string(body, "command_id", required=False) or str(uuid.uuid4())
    aggregate_type = _string(body, "aggregate_type")
    aggregate_id = _string(body, "aggregate_id")
    kind = _string(body, "type")
    deciders = catalog.deciders
    model = deciders.get(aggregate_type)
    if model is None:
        known = ", ".join(sorted(deciders)) or "none"
        raise InvalidCommand(f"aggregate_type {aggregate_type!r} takes no commands (known: {known})")
    if model.commands and kind not in model.commands:
        raise InvalidCommand(f"unknown command type {kind!r} for {aggregate_type}; one of {', '.join(model.commands)}")
    expected = body.get("expected_version")
    if isinstance(expected, float) and expected.is_integer():
        expected = int(expected)  # JSON has one number type: 3.0 is the integer 3
    if expected is not None and (
        not isinstance(expected, int) or isinstance(expected, bool) or not 0 <= expected <= MAX_VERSION
    ):
        raise InvalidCommand(f"expected_version must be an integer from 0 to {MAX_VERSION}, got {expected!r}")
    if "data" not in body:
        raise InvalidCommand("data is required (a JSON object; {} when the command has no fields)")
    data = body["data"]
    if not isinstance(data, dict):
        raise InvalidCommand(f"data must be a JSON object, got {type(data).__name__}")
    return {
        "command_id": command_id,
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "type": kind,
        "expected_version": expected,
        "data": data,
    }


def encode_command(command: dict[str, Any], reply_to: Optional[str]) -> bytes:
    """The command topic's record value: the checked command and where to send the answer."""
    return orjson.dumps({"command": command, "reply_to": reply_to})


def _record_seconds(record: Any) -> Optional[float]:
    """The command record's timestamp in seconds since the epoch, if it has one."""
    ts = getattr(record, "timestamp", None)
    if not isinstance(ts, (int, float)) or ts <= 0:
        return None
    return ts / 1000 if ts > 10_000_000_000 else ts  # Kafka gives ms, Faust's messages seconds


def _timestamp(record: Any) -> Optional[str]:
    """The command record's timestamp as RFC 3339: the same every time the record is decided."""
    seconds = _record_seconds(record)
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(record: Any) -> int:
    """The command record's timestamp in whole seconds (when its answer is stored), or now."""
    seconds = _record_seconds(record)
    return int(time.time() if seconds is None else seconds)


def events_for(command: dict[str, Any], decided: Iterable[Any], version: int, timestamp: Optional[str]) -> list[dict]:
    """Envelopes for a decision: consecutive versions after ``version``, ids derived from the command id."""
    out = []
    for i, event in enumerate(decided, start=1):
        if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not isinstance(
            event.get("data", {}), dict
        ):
            raise TypeError(f"decide must return events as {{'type': str, 'data': dict}}, got {event!r}")
        envelope = {
            "id": f"{command['command_id']}:{i}",
            "aggregate_id": command["aggregate_id"],
            "aggregate_type": command["aggregate_type"],
            "type": event["type"],
            "version": version + i,
            "data": event.get("data", {}),
            "metadata": {"command_id": command["command_id"], "command_type": command["type"]},
        }
        if timestamp is not None:
            envelope["timestamp"] = timestamp
        out.append(envelope)
    return out


def _error(command_id: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "command_id": command_id, **extra}


def moved_error(command_id: str, partition: int) -> dict[str, Any]:
    """The 503 body for a command this worker may no longer decide: another worker writes its partition now."""
    return _error(command_id, "unavailable", detail=(
        f"this worker no longer writes partition {partition}: another worker took it over. The command may "
        "still be decided there; send the same command_id again to learn its outcome (it is never applied twice)"))


def unavailable_error(command_id: str, detail: str) -> dict[str, Any]:
    """The 503 body for a command whose append did not commit."""
    return _error(command_id, "unavailable", detail=detail)


def prune_answers(engine: Engine, partition: int, before: int, limit: int = 5000) -> tuple[Plan, int]:
    """A plan that deletes the answers of ``partition`` stored before ``before`` (seconds); and how many.

    Command ids are idempotent for as long as their answer is kept
    (``PROJECTOR_COMMAND_ID_TTL``): the same id sent later is a new command.
    """
    batch = engine.begin()
    keys = expired_answers(batch, partition, before, limit)
    for key in keys:
        batch.put(COMMANDS, partition, key, None)
    return batch.finish(), len(keys) // 2


def decide_steps(
    engine: Engine,
    catalog: Catalog,
    records: Iterable[Any],
    *,
    events_topic: str,
    settings: Mapping[str, Any],
    enabled: bool,
    ready: Callable[[int], bool],
    moved: Callable[[int], bool] = lambda partition: False,
    every: int = 32,
) -> Generator[None, None, tuple[Plan, list[Answer]]]:
    """Decide a batch of command records, in order; returns the plan and an answer per command.

    ``ready(partition)`` says whether this writer has caught up with that
    partition of the events topic; ``moved(partition)``, whether another
    worker writes it now (this one was fenced). The plan's ``appends`` (the
    decided events) must be committed to Kafka before any of its writes.
    """
    batch = engine.begin()
    appends: list[Send] = []
    answers: list[Answer] = []
    deciders = catalog.deciders
    for n, record in enumerate(records, start=1):
        if n % every == 0:
            yield
        try:
            message = orjson.loads(record.value or b"null")
            command = message["command"]
            reply_to = message.get("reply_to")
            command_id = command["command_id"]
            if not isinstance(command_id, str) or not isinstance(command.get("aggregate_id"), str):
                raise TypeError("command_id and aggregate_id must be strings")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.error("skipping command record %s/%d/%d: %r", record.topic, record.partition, record.offset, exc)
            engine.metrics.commands["unreadable"] += 1
            continue
        if moved(record.partition):
            answer = Answer(command_id, 503, moved_error(command_id, record.partition))
        else:
            answer = _decide_one(engine, batch, appends, deciders, record, command, events_topic,
                                 settings, enabled, ready)
        answer.reply_to = reply_to if isinstance(reply_to, str) else None
        answer.aggregate_id = command["aggregate_id"]
        engine.metrics.commands["replayed" if answer.replayed else answer.body.get("error", "accepted")] += 1
        answers.append(answer)
    plan = yield from engine.finish_steps(batch, every)
    plan.appends = appends
    return plan, answers


def _decide_one(
    engine: Engine, batch: Batch, appends: list[Send], deciders: dict, record: Any,
    command: dict[str, Any], events_topic: str, settings: Mapping[str, Any], enabled: bool,
    ready: Callable[[int], bool],
) -> Answer:
    partition = record.partition
    command_id = command["command_id"]
    aid = command["aggregate_id"]
    if not ready(partition):
        return Answer(command_id, 503, _error(
            command_id, "not_ready", detail=f"the writer of partition {partition} is catching up with the events topic"))
    stored = get_answer(batch, partition, aid, command_id)
    if stored is not None:
        return Answer(command_id, stored["status"], stored["body"], replayed=True)
    if not enabled:
        return Answer(command_id, 503, _error(command_id, "commands_disabled", detail="commands.enabled is false"))

    def final(status: int, body: dict[str, Any]) -> Answer:
        """An answer that is this command id's for good: recorded with the writer's state."""
        put_answer(batch, partition, aid, command_id, status, body, _seconds(record))
        return Answer(command_id, status, body)

    model = deciders.get(command.get("aggregate_type"))
    if model is None:
        return final(400, _error(command_id, "invalid", detail=f"aggregate_type {command.get('aggregate_type')!r} "
                                                                "takes no commands"))
    key = aid.encode("utf-8")
    meta = agg.Meta.from_json(batch.get_json(INDEX, partition, agg.meta_key(aid)))
    if meta.parked:
        return Answer(command_id, 422, _error(
            command_id, "rejected", reason="parked",
            detail=f"aggregate {aid} is parked at version {meta.version} after a version gap; an operator must "
                   "release it first"))
    version = meta.version
    expected = command.get("expected_version")
    if expected is not None and expected != version:
        return final(409, _error(command_id, "version_conflict", expected_version=expected, actual_version=version))
    row = batch.get_json(model.name, partition, key)
    state = row["value"] if row else None
    try:
        decided = model.decide(state, {"type": command["type"], "data": command["data"]}, settings)
        envelopes = events_for(command, decided or [], version, _timestamp(record))
    except Rejected as exc:
        return final(422, _error(command_id, "rejected", reason=exc.reason, detail=exc.detail))
    except InvalidCommand as exc:
        return final(400, _error(command_id, "invalid", detail=str(exc)))
    except Exception as exc:  # a decider is user code: a bug rejects this command only
        log.exception("decide of %s for %s raised", command.get("type"), aid)
        return Answer(command_id, 422, _error(command_id, "rejected", reason="decide_error",
                                              detail=f"{type(exc).__name__}: {exc}"))
    if not envelopes:
        return final(200, {"command_id": command_id, "aggregate_id": aid, "version": version, "events": []})
    value = orjson.dumps(envelopes if len(envelopes) > 1 else envelopes[0])
    if len(key) + len(value) > engine.max_record:
        return final(422, _error(command_id, "rejected", reason="too_large", detail=(
            f"the decided events take {len(value)} bytes, more than the {engine.max_record} bytes a record "
            "may have")))
    source = f"{record.topic}/{partition}/{record.offset}"
    try:
        originals = decode_record(key, value)
        events = engine.schemas.upcast_all(originals)
    except InvalidRecord as exc:
        return Answer(command_id, 422, _error(command_id, "rejected", reason="invalid_event", detail=exc.message))
    sends_before = len(batch.plan.sends)
    engine.fold(batch, partition, aid, meta, [Pending(originals, events, key, value, source)])
    if meta.version != envelopes[-1]["version"]:
        # A read model's fold refused the decided events: append nothing, and
        # take back the dead letter the engine wrote for them.
        error = batch.plan.sends[-1].headers if len(batch.plan.sends) > sends_before else []
        del batch.plan.sends[sends_before:]
        detail = next((v.decode("utf-8", "replace") for k, v in error if k == HEADER_ERROR), "a fold refused them")
        return Answer(command_id, 422, _error(command_id, "rejected", reason="fold_error", detail=detail))
    appends.append(Send(events_topic, partition, key, value))
    return Answer(command_id, 200, get_answer(batch, partition, aid, command_id)["body"])
