"""Aggregates over HTTP: an aggregate's stored events, and the release of a parked one (CONTRACT §2, §5)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from projector.core import index as agg
from projector.core.engine import INDEX
from projector.core.partitioning import partition_for
from projector.runtime.kafka import KAFKA_WRITE_TIMEOUT
from projector.web.auth import is_admin
from projector.web.forwarding import Peers
from projector.web.params import MAX_LIMIT, int_param
from projector.web.responses import broker_unreachable, json_error, json_response, write_timeout

if TYPE_CHECKING:
    from projector.runtime.app import Projector


class AggregateViews:
    def __init__(self, projector: "Projector", peers: Peers) -> None:
        self.projector = projector
        self.peers = peers

    async def events(self, request: web.Request) -> web.Response:
        """``GET /aggregates/{id}/events``: from the aggregate index of the owner, never by scanning the topic."""
        p = self.projector
        aid = request.match_info["id"]
        from_version = int_param(request, "from_version", 1, 1)
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)

        async def local(partition: int) -> web.Response:
            meta_raw = p.store.get(INDEX, partition, agg.meta_key(aid))
            if meta_raw is None:
                return json_error(404, "not_found", aggregate_id=aid)
            meta = agg.Meta.from_json(orjson.loads(meta_raw))
            chunks = p.store.scan(INDEX, partition, agg.event_prefix(aid), start=agg.event_key(aid, from_version))
            events, next_version = agg.stored_events(meta, chunks, from_version, limit)
            return json_response({"aggregate_id": aid, "events": events, "next_version": next_version})

        return await self.peers.on_owner(request, INDEX, aid.encode("utf-8"), local)

    async def release(self, request: web.Request) -> web.Response:
        """``POST /aggregates/{id}/release`` (admin): a release request on the release topic, keyed by aggregate id."""
        p = self.projector
        if not is_admin(request, p.settings):
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
        if isinstance(skip_to, float) and skip_to.is_integer():
            skip_to = int(skip_to)  # JSON has one number type: 84.0 is the integer 84
        if skip_to is not None and (not isinstance(skip_to, int) or isinstance(skip_to, bool) or skip_to < 1):
            return json_error(400, "invalid", detail=f"skip_to must be an integer >= 1, got {skip_to!r}")
        unreachable = broker_unreachable(p)
        if unreachable is not None:
            return unreachable
        topic = p.release_topic.get_topic_name()
        command = {"action": "release", "skip_to": skip_to}
        key = aid.encode("utf-8")
        try:
            meta = await p.produce(topic, key, orjson.dumps(command), partition_for(key, p.partitions),
                                   KAFKA_WRITE_TIMEOUT)
        except asyncio.TimeoutError:
            return write_timeout("the release", "sending it again is harmless")
        return json_response({"aggregate_id": aid, "skip_to": skip_to, "offset": meta.offset}, status=202)
