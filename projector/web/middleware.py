"""What every request goes through before its view: the bearer-token check, JSON errors, and its timing.

:func:`web_application_options` gives the aiohttp application its middlewares
and its body size limit; the worker (projector.runtime.app) passes them to
Faust's web server when it creates it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from projector.web.auth import bearer, is_peer, peer_secret, query_token
from projector.web.metrics import RequestTimes, request_kind, worker_metrics
from projector.web.responses import json_error

if TYPE_CHECKING:
    from projector.runtime.app import Projector

log = logging.getLogger(__name__)

#: Largest request body, in bytes (more is 413 ``too_large``).
MAX_BODY = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The error code of each HTTP error aiohttp raises itself (other 4xx: ``invalid``, 5xx: ``unavailable``).
HTTP_CODES = {
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    414: "too_large",
}


def json_errors() -> Any:
    """Middleware: an ``HTTPException`` becomes its JSON error, anything else a logged 503 (never a 500 or HTML)."""

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = HTTP_CODES.get(exc.status)
            if code is None:
                code = "unavailable" if exc.status >= 500 else "invalid"
            status = exc.status if exc.status < 500 else 503
            response = json_error(status, code, detail=exc.reason)
            if isinstance(exc, web.HTTPMethodNotAllowed):
                response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            return response
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never a 500 or an HTML page
            log.exception("request %s %s failed", request.method, request.path)
            return json_error(503, "unavailable", detail=f"{type(exc).__name__}: {exc}")

    return json_errors


def auth(settings: Any) -> Any:
    """Middleware: the token check of every request.

    ``/internal/...`` routes are for workers only: with any token set they need the
    peer token (``X-Projector-Peer``), and nothing else opens them. Every other
    route but ``/healthz`` needs, with ``PROJECTOR_API_TOKEN`` set, the API token,
    the admin token, or the peer token (a request another worker forwards); the
    peer token never counts as the admin token (:func:`projector.web.auth.is_admin`).
    """
    open_warning_logged = False

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal open_warning_logged
        token = settings.api_token
        if request.path.startswith("/internal/"):
            if peer_secret(settings) is not None and not is_peer(request, settings):
                return json_error(401, "unauthorized", detail="internal routes are for workers: missing or wrong "
                                                              "peer token")
            return await handler(request)
        if token is None:
            if not open_warning_logged:
                open_warning_logged = True
                log.warning("PROJECTOR_API_TOKEN is not set: the HTTP API is open to anyone who can reach it")
            return await handler(request)
        if request.path == "/healthz":
            return await handler(request)
        ok = (
            bearer(request, token)
            or (settings.admin_token is not None and bearer(request, settings.admin_token))
            or is_peer(request, settings)
        )
        if not ok and request.path == "/" and request.method == "GET":
            # A browser cannot send a header when it opens a page: the status page
            # (which holds no data itself) takes the token as ?token=, and its
            # requests for data send it as a header.
            ok = query_token(request, token) or (
                settings.admin_token is not None and query_token(request, settings.admin_token)
            )
        if not ok:
            return json_error(401, "unauthorized", detail="missing or wrong bearer token")
        return await handler(request)

    return auth


def request_timer(times: RequestTimes) -> Any:
    """Middleware: how long each request took to answer, by kind (``projector_request_seconds`` in /metrics)."""

    @web.middleware
    async def request_timer(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            times.observe(request_kind(request), time.perf_counter() - started)

    return request_timer


def middlewares(projector: "Projector") -> list:
    """The middlewares, outermost first: the request timer, JSON errors, the token check, then the view."""
    return [request_timer(worker_metrics(projector).requests), json_errors(), auth(projector.settings)]


def web_application_options(projector: "Projector") -> dict[str, Any]:
    """Keyword arguments for the worker's ``aiohttp.web.Application``."""
    return {"middlewares": middlewares(projector), "client_max_size": MAX_BODY}
