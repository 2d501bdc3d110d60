"""projector's HTTP API (CONTRACT §5), mounted on Faust's aiohttp web server.

Every answer is JSON. Errors are ``{"error": "<code>", ...}``; the only 5xx
answers are 503 and 504, each with a JSON body.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import aiohttp
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from projector.partitioning import partition_for

if TYPE_CHECKING:
    from projector.app import Projector

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_LIMIT = 1000
#: Longest a request may wait for a version or offset (CONTRACT §5: timeout_ms <= 30000).
MAX_WAIT_MS = 30000
#: How long a key lookup keeps retrying while its partition has no owner (rebalance).
ROUTE_DEADLINE = 10.0
FORWARD_TIMEOUT = 15.0
FORWARDED_HEADER = "X-Projector-Forwarded"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def json_error(status: int, code: str, **extra: Any) -> web.Response:
    return json_response({"error": code, **extra}, status=status)


_HTTP_CODES = {
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    414: "too_large",
}


def _middlewares(projector: "Projector") -> list:
    settings = projector.settings
    open_warning_logged = False

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status)
            if code is None:
                code = "unavailable" if exc.status >= 500 else "invalid"
            status = exc.status if exc.status < 500 else 503
            return json_error(status, code, detail=exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never a 500 or an HTML page
            log.exception("request %s %s failed", request.method, request.path)
            return json_error(503, "unavailable", detail=f"{type(exc).__name__}: {exc}")

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal open_warning_logged
        token = settings.api_token
        if token is None:
            if not open_warning_logged:
                open_warning_logged = True
                log.warning("PROJECTOR_API_TOKEN is not set: the HTTP API is open to anyone who can reach it")
            return await handler(request)
        if request.path == "/healthz":
            return await handler(request)
        ok = _bearer(request, token) or (settings.admin_token is not None and _bearer(request, settings.admin_token))
        if not ok:
            return json_error(401, "unauthorized", detail="missing or wrong bearer token")
        return await handler(request)

    return [json_errors, auth]


def web_application_options(projector: "Projector") -> dict[str, Any]:
    return {"middlewares": _middlewares(projector), "client_max_size": MAX_BODY}


def _int_param(request: web.Request, name: str, default: int, minimum: int, maximum: Optional[int] = None,
               cap: bool = False) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise web.HTTPBadRequest(reason=f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        if cap:
            return maximum
        raise web.HTTPBadRequest(reason=f"{name} must be at most {maximum}, got {value}")
    return value


def _bearer(request: web.Request, token: str) -> bool:
    """True when the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _is_admin(request: web.Request, settings: Any) -> bool:
    return settings.admin_token is None or _bearer(request, settings.admin_token)


class Views:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector
        self._session: Optional[aiohttp.ClientSession] = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT))
        return self._session

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, detail = self.projector.readiness()
        control = self.projector.control
        # Where this worker stands on the control topic: applied offset, and
        # the records it had to read before it could be ready.
        progress = {"offset": control.offset, "target": control.target}
        if ready:
            return json_response({"status": "ready", "control": progress})
        return json_error(503, "not_ready", detail=detail, control=progress)

    # --- the control table (CONTRACT §3) -------------------------------------------

    async def get_control(self, request: web.Request) -> web.Response:
        """This worker's control table; ``min_offset`` + ``timeout_ms`` wait until it has applied that record."""
        control = self.projector.control
        min_offset = _int_param(request, "min_offset", -1, -1)
        timeout_ms = _int_param(request, "timeout_ms", 0, 0, MAX_WAIT_MS)
        if control.offset < min_offset and not await control.wait_for_offset(min_offset, timeout_ms / 1000):
            return json_error(504, "timeout", offset=control.offset)
        return json_response(control.snapshot())

    async def get_control_key(self, request: web.Request) -> web.Response:
        control = self.projector.control
        key = request.match_info["key"]
        if key not in control.entries:
            return json_error(404, "not_found", key=key, offset=control.offset)
        return json_response({"key": key, "value": control.entries[key], "offset": control.offset})

    async def put_control(self, request: web.Request) -> web.Response:
        if not _is_admin(request, self.projector.settings):
            return json_error(401, "unauthorized", detail="writing the control table needs the admin token")
        raw = await request.read()
        if not raw.strip():
            return json_error(400, "invalid", detail="the body must be a JSON value (null deletes the key)")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        return await self._write_control(request.match_info["key"], value)

    async def delete_control(self, request: web.Request) -> web.Response:
        if not _is_admin(request, self.projector.settings):
            return json_error(401, "unauthorized", detail="writing the control table needs the admin token")
        return await self._write_control(request.match_info["key"], None)

    async def _write_control(self, key: str, value: Any) -> web.Response:
        from projector.control import ControlError

        try:
            offset = await self.projector.write_control(key, value)
        except ControlError as exc:
            return json_error(400, "invalid", detail=str(exc))
        except MessageSizeTooLargeError:
            return json_error(413, "too_large", detail="the value is larger than the broker accepts for one record")
        except KafkaError as exc:
            return json_error(503, "unavailable", detail=f"writing the control topic failed: {exc!r}")
        return json_response({"key": key, "offset": offset}, status=202)

    async def list_tables(self, request: web.Request) -> web.Response:
        p = self.projector
        return json_response(
            {
                "tables": [
                    {"name": m.name, "description": m.description, "partitions": p.partitions}
                    for m in p.catalog.all
                ]
            }
        )

    async def _on_owner(
        self, request: web.Request, table: str, key_bytes: bytes, local: Callable[[int], Awaitable[web.Response]]
    ) -> web.Response:
        """Answer with ``local(partition)`` when this worker owns the key, else forward to the owner."""
        p = self.projector
        partition = partition_for(key_bytes, p.partitions)
        deadline = time.monotonic() + ROUTE_DEADLINE
        while True:
            if p.owns(partition):
                return await local(partition)
            owner = p.owner_url(table, partition)
            if owner and owner.rstrip("/") != p.settings.url and FORWARDED_HEADER not in request.headers:
                return await self._forward(request, owner)
            if time.monotonic() >= deadline:
                return json_error(
                    503,
                    "unavailable",
                    detail=f"partition {partition} of {table} has no owner yet (rebalancing); retry",
                )
            await asyncio.sleep(0.2)

    async def get_row(self, request: web.Request) -> web.Response:
        p = self.projector
        table = request.match_info["table"]
        key = request.match_info["key"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        key_bytes = key.encode("utf-8")

        async def local(partition: int) -> web.Response:
            raw = p.store.get(table, partition, key_bytes)
            row = orjson.loads(raw) if raw is not None else None
            if row is None or row.get("value") is None:
                return json_error(404, "not_found", table=table, key=key)
            return json_response({"table": table, "key": key, "version": row["version"], "value": row["value"]})

        return await self._on_owner(request, table, key_bytes, local)

    async def aggregate_events(self, request: web.Request) -> web.Response:
        from projector import aggregates as agg
        from projector.engine import INDEX

        p = self.projector
        aid = request.match_info["id"]
        from_version = _int_param(request, "from_version", 1, 1)
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)

        async def local(partition: int) -> web.Response:
            meta_raw = p.store.get(INDEX, partition, agg.meta_key(aid))
            if meta_raw is None:
                return json_error(404, "not_found", aggregate_id=aid)
            meta = agg.Meta.from_json(orjson.loads(meta_raw))
            chunks = p.store.scan(INDEX, partition, agg.event_prefix(aid), start=agg.event_key(aid, from_version))
            events, next_version = agg.stored_events(meta, chunks, from_version, limit)
            return json_response({"aggregate_id": aid, "events": events, "next_version": next_version})

        return await self._on_owner(request, INDEX, aid.encode("utf-8"), local)

    async def release(self, request: web.Request) -> web.Response:
        p = self.projector
        if not _is_admin(request, p.settings):
            return json_error(401, "unauthorized", detail="releasing an aggregate needs the admin token")
        aid = request.match_info["id"]
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        if not isinstance(body, dict) or set(body) - {"skip_to"}:
            return json_error(400, "invalid", detail='body must be {} or {"skip_to": <version>}')
        skip_to = body.get("skip_to")
        if skip_to is not None and (not isinstance(skip_to, int) or isinstance(skip_to, bool) or skip_to < 1):
            return json_error(400, "invalid", detail=f"skip_to must be an integer >= 1, got {skip_to!r}")
        topic = p.commands_topic.get_topic_name()
        command = {"action": "release", "skip_to": skip_to}
        fut = await p.app.producer.send(
            topic, aid.encode("utf-8"), orjson.dumps(command), partition_for(aid.encode("utf-8"), p.partitions), None, None
        )
        meta = await fut
        return json_response({"aggregate_id": aid, "skip_to": skip_to, "offset": meta.offset}, status=202)

    async def deadletters(self, request: web.Request) -> web.Response:
        from projector.deadletters import read_recent

        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)
        try:
            rows = await read_recent(self.projector.settings, limit)
        except Exception as exc:
            log.warning("reading dead letters failed: %r", exc)
            return json_error(503, "unavailable", detail=f"cannot read the dead-letter topic: {exc}")
        return json_response({"deadletters": rows})

    async def metrics(self, request: web.Request) -> web.Response:
        from projector.metrics import prometheus_text

        return web.Response(text=prometheus_text(self.projector), content_type="text/plain")

    async def _forward(self, request: web.Request, owner: str) -> web.Response:
        """Send the request on to the owning worker, keeping its status, JSON body and headers."""
        url = owner.rstrip("/") + request.rel_url.path_qs
        headers = {FORWARDED_HEADER: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with self.session.request(request.method, url, headers=headers, data=await request.read()) as r:
                body = await r.read()
                return web.Response(
                    body=body,
                    status=r.status,
                    content_type=r.content_type or "application/json",
                    headers={"X-Projector-Served-By": owner},
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return json_error(503, "unavailable", detail=f"owner {owner} did not answer: {exc!r}")


def install_routes(app: web.Application, projector: "Projector") -> None:
    views = Views(projector)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/tables", views.list_tables)
    app.router.add_get("/tables/{table}/{key}", views.get_row)
    app.router.add_get("/aggregates/{id}/events", views.aggregate_events)
    app.router.add_post("/aggregates/{id}/release", views.release)
    app.router.add_get("/control", views.get_control)
    app.router.add_get("/control/{key:.+}", views.get_control_key)
    app.router.add_put("/control/{key:.+}", views.put_control)
    app.router.add_delete("/control/{key:.+}", views.delete_control)
    app.router.add_get("/deadletters", views.deadletters)
    app.router.add_get("/metrics", views.metrics)
    from projector import openapi, statuspage

    openapi.install(app, projector)
    statuspage.install(app, projector)
