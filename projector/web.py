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

from projector.partitioning import partition_for

if TYPE_CHECKING:
    from projector.app import Projector

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
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
        given = request.headers.get("Authorization", "")
        admin = settings.admin_token
        expected = f"Bearer {token}".encode()
        ok = hmac.compare_digest(given.encode(), expected)
        if not ok and admin is not None:
            ok = hmac.compare_digest(given.encode(), f"Bearer {admin}".encode())
        if not ok:
            return json_error(401, "unauthorized", detail="missing or wrong bearer token")
        return await handler(request)

    return [json_errors, auth]


def web_application_options(projector: "Projector") -> dict[str, Any]:
    return {"middlewares": _middlewares(projector), "client_max_size": MAX_BODY}


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
        if ready:
            return json_response({"status": "ready"})
        return json_error(503, "not_ready", detail=detail)

    async def list_tables(self, request: web.Request) -> web.Response:
        p = self.projector
        return json_response(
            {
                "tables": [
                    {"name": m.name, "description": m.description, "partitions": p.partitions} for m in p.models
                ]
            }
        )

    async def get_row(self, request: web.Request) -> web.Response:
        p = self.projector
        table = request.match_info["table"]
        key = request.match_info["key"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        key_bytes = key.encode("utf-8")
        partition = partition_for(key_bytes, p.partitions)
        deadline = time.monotonic() + ROUTE_DEADLINE
        while True:
            if p.owns(partition):
                row = p.tables[table].get(partition, key_bytes)
                if row is None or row.get("value") is None:
                    return json_error(404, "not_found", table=table, key=key)
                return json_response({"table": table, "key": key, "version": row["version"], "value": row["value"]})
            owner = p.owner_url(table, partition)
            if owner and owner.rstrip("/") != p.settings.url and FORWARDED_HEADER not in request.headers:
                return await self._forward(request, owner)
            if time.monotonic() >= deadline:
                return json_error(
                    503,
                    "unavailable",
                    detail=f"partition {partition} of table {table} has no owner yet (rebalancing); retry",
                )
            await asyncio.sleep(0.2)

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
    projector.views = views
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/tables", views.list_tables)
    app.router.add_get("/tables/{table}/{key}", views.get_row)
