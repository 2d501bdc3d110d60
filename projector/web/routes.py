"""Every route of projector's HTTP API (CONTRACT §5), and the view that answers it.

:mod:`projector.worker` has :func:`install_routes` called on Faust's
aiohttp application, whose options come from
:func:`projector.web.middleware.web_application_options`. A route added here
must be documented in :mod:`projector.web.openapi` (tests/unit/web/test_openapi.py
checks both ways).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from aiohttp import web

from projector.web.aggregates import AggregateViews
from projector.web.commands import CommandViews
from projector.web.control import ControlViews
from projector.web.deadletters import DeadLetterViews
from projector.web.digest import DigestViews
from projector.web.forwarding import Peers
from projector.web.openapi import OpenAPIView
from projector.web.operations import OperationsViews
from projector.web.status import StatusViews, unindex_placeholder
from projector.web.tables import TableViews

if TYPE_CHECKING:
    from projector.runtime.app import Projector


async def only_post(request: web.Request) -> web.Response:
    """Any method but POST on a path that takes POST only (and would otherwise reach the row route)."""
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


def install_routes(app: web.Application, projector: "Projector", peers: Optional[Peers] = None) -> None:
    """Register every view on ``app``; ``peers`` is the worker's session to the others (a new one if not given)."""
    peers = peers if peers is not None else Peers(projector)
    operations = OperationsViews(projector)
    tables = TableViews(projector, peers)
    aggregates = AggregateViews(projector, peers)
    commands = CommandViews(projector)
    control = ControlViews(projector)
    deadletters = DeadLetterViews(projector)
    digests = DigestViews(projector)
    status = StatusViews(projector)
    openapi = OpenAPIView(projector)

    router = app.router
    # Faust's placeholder index ({"status": "OK"}) is registered at "/" before
    # the status page and would win: take it out of the route index.
    unindex_placeholder(router)

    router.add_get("/healthz", operations.healthz)
    router.add_get("/readyz", operations.readyz)
    router.add_get("/metrics", operations.metrics)
    router.add_get("/openapi.json", openapi.openapi_json)

    router.add_get("/tables", tables.list_tables)
    router.add_get("/tables/{table}", tables.list_rows)
    # Before the row route: a key cannot be "digest" or "cutover" (GET there is 405, Allow: POST).
    router.add_get("/tables/{table}/digest", digests.digest)
    router.add_post("/tables/{table}/cutover", tables.cutover)
    router.add_route("*", "/tables/{table}/cutover", only_post)
    router.add_get("/tables/{table}/{key}", tables.get_row)
    router.add_get("/tables/{table}/index/{index}/{value}", tables.index_rows)
    router.add_get("/internal/scan/{table}", tables.internal_scan)
    router.add_get("/internal/index/{table}/{index}", tables.internal_index)

    router.add_get("/aggregates/{id}/events", aggregates.events)
    router.add_post("/aggregates/{id}/release", aggregates.release)

    router.add_post("/commands", commands.post_command)
    router.add_post("/internal/command-answers", commands.internal_command_answers)

    router.add_get("/control", control.get_control)
    # Any key, line breaks included ([\s\S], not "."): writing a key with a control character is
    # 400 `invalid` from the view, as the document says, not a 404 from the router.
    router.add_get("/control/{key:[\\s\\S]+}", control.get_control_key)
    router.add_put("/control/{key:[\\s\\S]+}", control.put_control)
    router.add_delete("/control/{key:[\\s\\S]+}", control.delete_control)

    router.add_get("/deadletters", deadletters.deadletters)

    router.add_get("/", status.page)
    router.add_get("/status", status.status)

    app.on_startup.append(status.start)
    app.on_cleanup.append(status.close)
    app.on_cleanup.append(peers.close)
