"""JSON answers: every answer of the HTTP API is JSON (CONTRACT §5).

Errors are ``{"error": "<code>", ...}``; the only 5xx answers are 503 and 504,
each with a JSON body. The helpers for the errors several resources share
(Kafka unreachable, a write Kafka did not acknowledge) live here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import orjson
from aiohttp import web

from projector.runtime.kafka import KAFKA_WRITE_TIMEOUT

if TYPE_CHECKING:
    from projector.runtime.app import Projector


def json_response(body: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def json_error(status: int, code: str, **extra: Any) -> web.Response:
    return json_response({"error": code, **extra}, status=status)


#: Seconds a client is told to wait (``Retry-After``) when a limit is reached (or a rebalance is under way).
RETRY_AFTER = 1


def retry_later(code: str, detail: str, **extra: Any) -> web.Response:
    """503 ``code`` with ``Retry-After`` (header and body): retry shortly."""
    response = json_error(503, code, detail=detail, retry_after=RETRY_AFTER, **extra)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def overloaded(detail: str) -> web.Response:
    """503 ``overloaded`` with ``Retry-After``: a limit of this worker is reached; retry shortly."""
    return retry_later("overloaded", detail)


def broker_unreachable(projector: "Projector", **extra: Any) -> Optional[web.Response]:
    """503 before anything is written, while this worker cannot reach Kafka; None when it can."""
    broker = projector.broker
    if broker.reachable:
        return None
    snapshot = broker.snapshot()
    return json_error(503, "broker_unreachable", broker=snapshot, **extra,
                      detail=f"Kafka at {projector.settings.broker} is unreachable since {snapshot['since']}: "
                             "nothing was written; retry once it is back")


def write_timeout(what: str, hint: str) -> web.Response:
    """504: Kafka did not acknowledge ``what`` in time; ``hint`` says how to learn the outcome."""
    return json_error(504, "timeout", detail=f"Kafka did not acknowledge {what} within {KAFKA_WRITE_TIMEOUT:g} s: "
                                             f"the outcome is unknown, it may still be written ({hint})")

