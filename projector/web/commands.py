"""The command side over HTTP (CONTRACT §5, ``POST /commands``).

Any worker takes a command and hands it to the writer of its aggregate
(``projector.commands``, a :class:`~projector.runtime.command_side.CommandRoundTrip`);
the writer's answer comes back to the taking worker through
``POST /internal/command-answers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from projector.core.commands import check_command
from projector.core.errors import InvalidCommand
from projector.web.params import MAX_WAIT_MS, int_param
from projector.web.responses import broker_unreachable, json_error, json_response, retry_later

if TYPE_CHECKING:
    from projector.runtime.app import Projector

#: How long ``POST /commands`` waits for the writer's answer by default (``timeout_ms``).
COMMAND_WAIT_MS = 10000


class CommandViews:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector

    async def post_command(self, request: web.Request) -> web.Response:
        """Take a command, have the writer of its aggregate decide it, and answer with the decision."""
        p = self.projector
        timeout_ms = int_param(request, "timeout_ms", COMMAND_WAIT_MS, 1, MAX_WAIT_MS)
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        try:
            command = check_command(body, p.catalog)
        except InvalidCommand as exc:
            command_id = body.get("command_id") if isinstance(body, dict) else None
            return json_error(400, "invalid", detail=str(exc),
                              **({"command_id": command_id} if isinstance(command_id, str) else {}))
        model = p.catalog.deciders.get(command["aggregate_type"])
        state = p.states.get(model.name) if model is not None else None
        if state is not None and state.live is None:
            return retry_later("building", f"read model {model.name}, the state of {command['aggregate_type']} "
                               "aggregates, is being built from the events topic's history; it takes commands "
                               "once it has caught up", command_id=command["command_id"])
        if not p.control.commands_enabled:
            return json_error(503, "commands_disabled", command_id=command["command_id"],
                              detail="commands.enabled is false in the control table")
        ready, detail = p.readiness()
        if not ready:
            return json_error(503, "not_ready", command_id=command["command_id"], detail=detail)
        unreachable = broker_unreachable(p, command_id=command["command_id"])
        if unreachable is not None:
            return unreachable
        try:
            status, answer = await p.commands.submit(command, timeout_ms / 1000)
        except KafkaError as exc:
            return json_error(503, "unavailable", command_id=command["command_id"],
                              detail=f"writing the command topic failed: {exc!r}")
        return json_response(answer, status=status)

    async def internal_command_answers(self, request: web.Request) -> web.Response:
        """Answers from the writers, for commands this worker took (see :meth:`CommandRoundTrip.submit`)."""
        shape = "a JSON array of {aggregate_id: string, command_id: string, status: integer, body: object}"
        try:
            items = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("command_id"), str) and isinstance(i.get("body"), dict)
            and isinstance(i.get("aggregate_id"), str)
            and isinstance(i.get("status"), int) and not isinstance(i.get("status"), bool) and 100 <= i["status"] <= 599
            for i in items
        ):
            return json_error(400, "invalid", detail=f"expected {shape}")
        for item in items:
            self.projector.commands.resolve(item["aggregate_id"], item["command_id"], item["status"], item["body"])
        return json_response({"delivered": len(items)})
