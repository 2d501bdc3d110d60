"""``GET /deadletters``: the newest records of the dead-letter topic, newest first (CONTRACT §2, §5)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from projector.runtime.deadletters import read_recent
from projector.web.params import MAX_LIMIT, int_param
from projector.web.responses import broker_unreachable, json_error, json_response

if TYPE_CHECKING:
    from projector.runtime.app import Projector

log = logging.getLogger(__name__)

#: Longest GET /deadletters reads the dead-letter topic before it answers 503.
DEADLETTERS_TIMEOUT = 15.0


class DeadLetterViews:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector

    async def deadletters(self, request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)
        unreachable = broker_unreachable(self.projector)
        if unreachable is not None:
            return unreachable
        try:
            rows = await asyncio.wait_for(read_recent(self.projector.settings, limit), DEADLETTERS_TIMEOUT)
        except asyncio.TimeoutError:
            return json_error(503, "unavailable",
                              detail=f"reading the dead-letter topic took more than {DEADLETTERS_TIMEOUT:g} s")
        except Exception as exc:  # logged, and answered with the error
            log.warning("reading dead letters failed: %r", exc)
            return json_error(503, "unavailable", detail=f"cannot read the dead-letter topic: {exc}")
        return json_response({"deadletters": rows})
