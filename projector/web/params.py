"""Query parameters: the API's limits and how a bad value becomes 400 ``invalid`` (CONTRACT §5)."""

from __future__ import annotations

import re
from typing import Optional

from aiohttp import web

#: Most rows or events one answer holds; a larger ``limit`` is capped, not refused.
MAX_LIMIT = 1000
#: Longest a request may wait for a version or offset (CONTRACT §5: timeout_ms <= 30000).
MAX_WAIT_MS = 30000
#: Longest key prefix or cursor key accepted, in bytes.
MAX_KEY_PARAM = 1024
#: An integer as the OpenAPI document's ``"type": "integer"`` means it in a query: ASCII digits, maybe a minus.
#: (``int()`` alone also takes blanks around it, ``1_000``, ``+5`` and non-ASCII digits such as ``٣``.)
INTEGER = re.compile(r"-?[0-9]+")


def int_param(request: web.Request, name: str, default: int, minimum: int, maximum: Optional[int] = None,
              cap: bool = False) -> int:
    """The integer query parameter ``name``: ``default`` when absent, capped at ``maximum`` with ``cap``.

    Anything else that is not an integer from ``minimum`` to ``maximum`` raises
    ``HTTPBadRequest``, which the middleware answers as 400 ``invalid``.
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        if not INTEGER.fullmatch(raw):
            raise ValueError(raw)
        value = int(raw)
    except ValueError:  # also more digits than int() converts
        raise web.HTTPBadRequest(reason=f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise web.HTTPBadRequest(reason=f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        if cap:
            return maximum
        raise web.HTTPBadRequest(reason=f"{name} must be at most {maximum}, got {value}")
    return value
