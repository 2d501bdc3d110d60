"""The control table over HTTP (CONTRACT §3, §5): read it as this worker holds it, write it (admin).

Writes go to the control topic; every worker applies them from there, so a
write's answer (202) gives the record's offset, and ``GET /control?min_offset=``
waits until this worker has applied it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from projector.core.errors import ControlError
from projector.web.auth import is_admin
from projector.web.params import MAX_WAIT_MS, int_param
from projector.web.responses import broker_unreachable, json_error, json_response, overloaded, write_timeout

if TYPE_CHECKING:
    from projector.runtime.app import Projector


class ControlViews:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector

    async def get_control(self, request: web.Request) -> web.Response:
        """This worker's control table; ``min_offset`` + ``timeout_ms`` wait until it has applied that record."""
        control = self.projector.control
        min_offset = int_param(request, "min_offset", -1, -1)
        timeout_ms = int_param(request, "timeout_ms", 0, 0, MAX_WAIT_MS)
        if control.offset < min_offset and timeout_ms > 0:
            parking = self.projector.parking
            if not parking.enter():
                return overloaded(f"{parking.cap} requests are already waiting on this worker; retry")
            try:
                applied = await control.wait_for_offset(min_offset, timeout_ms / 1000)
            finally:
                parking.leave()
            if not applied:
                return json_error(504, "timeout", offset=control.offset)
        elif control.offset < min_offset:
            return json_error(504, "timeout", offset=control.offset)
        return json_response(control.snapshot())

    async def get_control_key(self, request: web.Request) -> web.Response:
        control = self.projector.control
        key = request.match_info["key"]
        if key not in control.entries:
            return json_error(404, "not_found", key=key, offset=control.offset)
        return json_response({"key": key, "value": control.entries[key], "offset": control.offset})

    async def put_control(self, request: web.Request) -> web.Response:
        if not is_admin(request, self.projector.settings):
            return json_error(401, "unauthorized", detail="writing the control table needs the admin token")
        raw = await request.read()
        if not raw.strip():
            return json_error(400, "invalid", detail="the body must be a JSON value (null deletes the key)")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        return await self._write(request.match_info["key"], value)

    async def delete_control(self, request: web.Request) -> web.Response:
        if not is_admin(request, self.projector.settings):
            return json_error(401, "unauthorized", detail="writing the control table needs the admin token")
        return await self._write(request.match_info["key"], None)

    async def _write(self, key: str, value: Any) -> web.Response:
        """Check the entry against the settings this worker knows, then write it to the control topic."""
        try:
            self.projector.control.check_entry(key, value)
        except ControlError as exc:
            return json_error(400, "invalid", detail=str(exc))
        unreachable = broker_unreachable(self.projector)
        if unreachable is not None:
            return unreachable
        try:
            offset = await self.projector.write_control(key, value)
        except asyncio.TimeoutError:
            return write_timeout("the control record", "GET /control shows whether it was applied")
        except MessageSizeTooLargeError:
            return json_error(413, "too_large", detail="the value is larger than the broker accepts for one record")
        except KafkaError as exc:
            return json_error(503, "unavailable", detail=f"writing the control topic failed: {exc!r}")
        return json_response({"key": key, "offset": offset}, status=202)
