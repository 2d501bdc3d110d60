"""Worker to worker: every worker answers every request, asking the owner of the key's partition.

:class:`Peers` holds this worker's HTTP session to the others: :meth:`Peers.on_owner`
answers locally when this worker owns the partition and forwards otherwise;
:meth:`Peers.post` is how the worker itself calls another one's internal
endpoints (the command side sends answers with it, see :mod:`projector.worker`).
Every such call carries the peer token (:func:`projector.web.auth.peer_headers`),
never the client's ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import aiohttp
import orjson
from aiohttp import web

from projector.core.partitioning import partition_for
from projector.runtime.waiters import ParkingLimit
from projector.web.auth import is_forwarded, peer_headers
from projector.web.responses import json_error, overloaded, retry_later

if TYPE_CHECKING:
    from projector.runtime.app import Projector

#: How long a key lookup keeps retrying while its partition has no owner, or its new owner is still
#: restoring it (a rebalance: a worker restarted, joined or left).
ROUTE_DEADLINE = 20.0
#: How long a forwarded request may take (its owner may be waiting out a rebalance itself).
FORWARD_TIMEOUT = ROUTE_DEADLINE + 5.0
#: Connections one worker keeps to the others for plain calls (lookups, scans, answers).
PLAIN_CONNECTIONS = 100
#: Set on a forwarded answer: the URL of the worker that answered.
SERVED_BY_HEADER = "X-Projector-Served-By"
#: Set on a 503 of a worker that no longer owns the row (a rebalance moved it while the request waited).
MOVED_HEADER = "X-Projector-Moved"


def moved(detail: str) -> web.Response:
    """503 ``unavailable`` of a request whose partition moved away from this worker while it waited.

    The worker that forwarded it (or this one, for its own client) sees
    :data:`MOVED_HEADER` and asks the new owner; a client that gets it retries.
    """
    response = retry_later("unavailable", detail)
    response.headers[MOVED_HEADER] = "1"
    return response


def _moved(response: web.StreamResponse) -> bool:
    return response.status == 503 and response.headers.get(MOVED_HEADER) == "1"

class Peers:
    """The other workers, as the views reach them: two HTTP sessions, opened on first use.

    ``session`` (``PLAIN_CONNECTIONS`` connections) is for calls that answer at once;
    ``long_poll_session`` (``max_forwarded_waits`` connections) for forwarded requests
    that may wait (``min_version`` with ``timeout_ms``), so they never take the
    connections key lookups need. At most ``max_forwarded_waits`` of them are in
    flight at once; more get 503 ``overloaded``.
    """

    def __init__(self, projector: "Projector", timeout: float = FORWARD_TIMEOUT) -> None:
        self.projector = projector
        self.timeout = timeout
        self.max_waits = int(getattr(projector.settings, "max_forwarded_waits", 64))
        self._session: Optional[aiohttp.ClientSession] = None
        self._long_poll_session: Optional[aiohttp.ClientSession] = None
        #: Forwarded long-polls in flight now.
        self.waits = ParkingLimit(self.max_waits)

    @property
    def session(self) -> aiohttp.ClientSession:
        """One session (and its kept-alive connections) for the calls that answer at once, opened on first use."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=PLAIN_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    @property
    def long_poll_session(self) -> aiohttp.ClientSession:
        """The session of forwarded requests that may wait, with its own connections."""
        if self._long_poll_session is None or self._long_poll_session.closed:
            self._long_poll_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_waits),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._long_poll_session

    async def post(self, url: str, path: str, body: Any) -> None:
        """POST a JSON body to another worker's internal endpoint, with the peer token."""
        headers = {**peer_headers(self.projector.settings), "Content-Type": "application/json"}
        async with self.session.post(url.rstrip("/") + path, data=orjson.dumps(body), headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"{url}{path} answered {r.status}: {(await r.read())[:200]!r}")

    async def close(self, app: Any = None) -> None:
        """Close the sessions (an aiohttp ``on_cleanup`` callback)."""
        for session in (self._session, self._long_poll_session):
            if session is not None and not session.closed:
                await session.close()

    async def on_owner(
        self, request: web.Request, table: str, key_bytes: bytes, local: Callable[[int], Awaitable[web.Response]],
        extra_timeout: float = 0.0,
    ) -> web.Response:
        """Answer with ``local(partition)`` when this worker owns the key, else forward to the owner."""
        p = self.projector
        partition = partition_for(key_bytes, p.partitions)
        deadline = time.monotonic() + ROUTE_DEADLINE + extra_timeout
        forwarded = is_forwarded(request, p.settings)
        while True:
            if p.owns(partition) and not p.recovered:
                pass  # its rows are being restored (a rebalance gave it the partition): wait for them
            elif p.owns(partition):
                response = await local(partition)
                if forwarded or not _moved(response) or p.stopping or time.monotonic() >= deadline:
                    return response
                # It moved while it waited: ask the new owner (below, once the group says who it is).
            owner = p.owner_url(table, partition)
            if owner and owner.rstrip("/") != p.settings.url and forwarded:
                # Sent here as the owner, but the partition is another worker's now: the worker
                # that forwarded it asks that one.
                return moved(f"partition {partition} of {table} is no longer this worker's; retry")
            if owner and owner.rstrip("/") != p.settings.url:
                response = await self.forward(request, owner, extra_timeout, gone_ok=time.monotonic() < deadline)
                if response is not None and (not _moved(response) or time.monotonic() >= deadline):
                    return response
                # The owner is gone (stopped, restarting), or the row moved from it while the request
                # waited there: the group hands its partitions over; ask again.
            if time.monotonic() >= deadline:
                return json_error(
                    503,
                    "unavailable",
                    detail=f"partition {partition} of {table} has no owner yet, or its owner is still restoring it "
                    "(rebalancing); retry",
                )
            await asyncio.sleep(0.2)

    async def forward(self, request: web.Request, owner: str, extra_timeout: float = 0.0,
                      gone_ok: bool = False) -> Optional[web.Response]:
        """Send the request on to the owning worker, keeping its status, JSON body and headers.

        ``gone_ok``: None when the owner takes no connection (the request never
        reached it), so that the caller can ask the next owner.
        """
        url = owner.rstrip("/") + request.rel_url.path_qs
        headers = peer_headers(self.projector.settings)  # never the client's Authorization
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT + extra_timeout)
        session = self.session
        if extra_timeout > 0:  # a request that may wait: its own pool, and a cap
            if not self.waits.enter():
                return overloaded(f"{self.max_waits} forwarded waiting requests are in flight; retry")
            session = self.long_poll_session
        try:
            async with session.request(
                request.method, url, headers=headers, data=await request.read(), timeout=timeout
            ) as r:
                body = await r.read()
                headers = {SERVED_BY_HEADER: owner}
                for name in (MOVED_HEADER, "Retry-After"):
                    if name in r.headers:
                        headers[name] = r.headers[name]
                return web.Response(
                    body=body,
                    status=r.status,
                    content_type=r.content_type or "application/json",
                    headers=headers,
                )
        except aiohttp.ClientConnectorError as exc:
            if gone_ok:
                return None
            return json_error(503, "unavailable", detail=f"owner {owner} did not answer: {exc!r}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return json_error(503, "unavailable", detail=f"owner {owner} did not answer: {exc!r}")
        finally:
            if extra_timeout > 0:
                self.waits.leave()
