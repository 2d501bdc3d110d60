"""Worker to worker: every worker answers every request, asking the owner of the key's partition.

:class:`Peers` holds this worker's HTTP session to the others: :meth:`Peers.on_owner`
answers locally when this worker owns the partition and forwards otherwise;
:meth:`Peers.post` is how the worker itself calls another one's internal
endpoints (the command side sends answers with it, see :mod:`projector.worker`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import aiohttp
import orjson
from aiohttp import web

from projector.core.partitioning import partition_for
from projector.web.responses import json_error

if TYPE_CHECKING:
    from projector.runtime.app import Projector

#: How long a key lookup keeps retrying while its partition has no owner (rebalance).
ROUTE_DEADLINE = 10.0
FORWARD_TIMEOUT = 15.0
#: Marks a request one worker sends another: the receiver answers it itself, never forwards it again.
FORWARDED_HEADER = "X-Projector-Forwarded"
#: Set on a forwarded answer: the URL of the worker that answered.
SERVED_BY_HEADER = "X-Projector-Served-By"


def forwarded_headers(request: web.Request) -> dict[str, str]:
    """Headers of a request one worker sends another on a client's behalf: marked, with its credentials."""
    headers = {FORWARDED_HEADER: "1"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    return headers


class Peers:
    """The other workers, as the views reach them: one HTTP session, opened on first use."""

    def __init__(self, projector: "Projector", timeout: float = FORWARD_TIMEOUT) -> None:
        self.projector = projector
        self.timeout = timeout
        self._session: Optional[aiohttp.ClientSession] = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """One session (and its kept-alive connections) for all of these calls, opened on first use."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def post(self, url: str, path: str, body: Any) -> None:
        """POST a JSON body to another worker's internal endpoint, with this deployment's API token."""
        headers = {FORWARDED_HEADER: "1", "Content-Type": "application/json"}
        if self.projector.settings.api_token is not None:
            headers["Authorization"] = f"Bearer {self.projector.settings.api_token}"
        async with self.session.post(url.rstrip("/") + path, data=orjson.dumps(body), headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"{url}{path} answered {r.status}: {(await r.read())[:200]!r}")

    async def close(self, app: Any = None) -> None:
        """Close the session (an aiohttp ``on_cleanup`` callback)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def on_owner(
        self, request: web.Request, table: str, key_bytes: bytes, local: Callable[[int], Awaitable[web.Response]],
        extra_timeout: float = 0.0,
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
                return await self.forward(request, owner, extra_timeout)
            if time.monotonic() >= deadline:
                return json_error(
                    503,
                    "unavailable",
                    detail=f"partition {partition} of {table} has no owner yet (rebalancing); retry",
                )
            await asyncio.sleep(0.2)

    async def forward(self, request: web.Request, owner: str, extra_timeout: float = 0.0) -> web.Response:
        """Send the request on to the owning worker, keeping its status, JSON body and headers."""
        url = owner.rstrip("/") + request.rel_url.path_qs
        headers = forwarded_headers(request)
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT + extra_timeout)
        try:
            async with self.session.request(
                request.method, url, headers=headers, data=await request.read(), timeout=timeout
            ) as r:
                body = await r.read()
                return web.Response(
                    body=body,
                    status=r.status,
                    content_type=r.content_type or "application/json",
                    headers={SERVED_BY_HEADER: owner},
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return json_error(503, "unavailable", detail=f"owner {owner} did not answer: {exc!r}")
