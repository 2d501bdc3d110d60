"""What operators and orchestrators poll: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from projector.web.metrics import worker_metrics
from projector.web.responses import json_error, json_response

if TYPE_CHECKING:
    from projector.runtime.app import Projector


class OperationsViews:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector
        self.worker_metrics = worker_metrics(projector)

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, detail = self.projector.readiness()
        control = self.projector.control
        # Where this worker stands on the control topic: applied offset, and
        # the records it had to read before it could be ready.
        progress = {"offset": control.offset, "target": control.target}
        # Losing the broker does not make a ready worker unready: it still serves reads.
        broker = self.projector.broker.snapshot()
        if ready:
            return json_response({"status": "ready", "control": progress, "broker": broker})
        return json_error(503, "not_ready", detail=detail, control=progress, broker=broker)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text 0.0.4, or OpenMetrics 1.0.0 when ``Accept`` asks for it (:mod:`projector.web.metrics`)."""
        body, content_type = self.worker_metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})
