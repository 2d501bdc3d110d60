"""The read models over HTTP (CONTRACT §5): ``GET /tables``, a row, a listing, an index lookup and their scans.

A row is answered by the worker that owns its partition (:class:`~projector.web.forwarding.Peers`
forwards to it); a listing merges every partition's rows in key order,
asking each owner for its own (``GET /internal/scan/{table}``); an index lookup
does the same over the index entries of one value (``GET /internal/index/{table}/{index}``).
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import logging
from typing import TYPE_CHECKING, Optional

import aiohttp
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from projector.core.indexes import BadIndexValue, entry_prefix, index_table, index_values, indexable
from projector.core.lifecycle import cutover_key
from projector.runtime.waiters import ParkingLimit
from projector.web.auth import is_admin, peer_headers
from projector.web.forwarding import ROUTE_DEADLINE, Peers, moved
from projector.web.params import MAX_KEY_PARAM, MAX_LIMIT, MAX_WAIT_MS, int_param
from projector.web.responses import json_error, json_response, overloaded, retry_later

if TYPE_CHECKING:
    from projector.runtime.app import Projector

log = logging.getLogger(__name__)

#: Listings one worker serves at once (each asks every other worker); more get 503 ``overloaded``.
MAX_LISTINGS = 32


def encode_cursor(table: str, key: str, *scope: str) -> str:
    """An opaque cursor: the last key returned, for this table (and ``scope``: an index and its value)."""
    return base64.urlsafe_b64encode(orjson.dumps([table, *scope, key])).decode().rstrip("=")


def decode_cursor(cursor: Optional[str], table: str, *scope: str) -> Optional[str]:
    """The key a cursor of :func:`encode_cursor` holds (None for no cursor); 400 for any other string."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        *bound, key = orjson.loads(raw)
        if len(bound) != 1 + len(scope):
            raise ValueError(cursor)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise web.HTTPBadRequest(reason="cursor is not one this API gave out") from None
    if bound != [table, *scope] or not isinstance(key, str) or len(key.encode("utf-8")) > MAX_KEY_PARAM:
        of = f"index {scope[0]} = {scope[1]!r} of table {table}" if scope else f"table {table}"
        raise web.HTTPBadRequest(reason=f"cursor does not belong to {of}")
    return key


class TableViews:
    def __init__(self, projector: "Projector", peers: Peers) -> None:
        self.projector = projector
        self.peers = peers
        #: Listings under way now (at most MAX_LISTINGS).
        self.listings = ParkingLimit(MAX_LISTINGS)

    async def list_tables(self, request: web.Request) -> web.Response:
        p = self.projector
        out = []
        for m in p.catalog.all:
            state = p.states.get(m.name)
            out.append({
                "name": m.name,
                "description": m.description,
                "partitions": p.partitions,
                # The version that answers (null: none yet, it is being built).
                "version": state.live if state is not None else 1,
                "indexes": list(getattr(m, "indexes", {})),
                "building": p.builds.summary(m.name),
            })
        return json_response({"tables": out})

    def _building(self, table: str) -> Optional[web.Response]:
        """503 ``building`` for a brand-new read model that has not caught up yet (no version answers)."""
        p = self.projector
        state = p.states.get(table)
        if state is None or state.live is not None:
            return None
        summary = p.builds.summary(table) or {}
        return retry_later("building", f"read model {table} is being built from the events topic's history; "
                           "it answers once every partition has caught up",
                           remaining=summary.get("remaining"), eta_seconds=summary.get("eta_seconds"))

    async def cutover(self, request: web.Request) -> web.Response:
        """Switch to the new version of a read model, built and caught up (with PROJECTOR_CUTOVER=manual)."""
        p = self.projector
        table = request.match_info["table"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        if not is_admin(request, p.settings):
            return json_error(401, "unauthorized", detail="a cutover needs the admin token")
        build = p.builds.building(table)
        if build is None:
            state = p.states.get(table)
            live = state.live if state is not None else 1
            return json_error(409, "not_building", table=table,
                              detail=f"no new version of {table} is being built; version {live} answers")
        if not p.builds.caught_up(table):
            summary = p.builds.summary(table) or {}
            return json_error(409, "not_caught_up", table=table, version=build.version,
                              remaining=summary.get("remaining"), eta_seconds=summary.get("eta_seconds"),
                              detail=f"version {build.version} of {table} has not caught up on every partition yet")
        try:
            offset = await p.write_control(cutover_key(table), build.version)
        except (asyncio.TimeoutError, KafkaError) as exc:
            return retry_later("unavailable", f"writing the cutover to the control topic failed: {exc!r}; retry")
        return json_response({"table": table, "version": build.version, "offset": offset}, status=202)

    async def get_row(self, request: web.Request) -> web.Response:
        """One row. ``min_version`` + ``timeout_ms``: wait on the owner until the row reaches that version."""
        p = self.projector
        table = request.match_info["table"]
        key = request.match_info["key"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        building = self._building(table)
        if building is not None:
            return building
        min_version = int_param(request, "min_version", 0, 0)
        timeout_ms = int_param(request, "timeout_ms", 0, 0, MAX_WAIT_MS)
        key_bytes = key.encode("utf-8")
        deadline = asyncio.get_running_loop().time() + timeout_ms / 1000

        def read(partition: int) -> Optional[dict]:
            raw = p.store.get(table, partition, key_bytes)
            row = orjson.loads(raw) if raw is not None else None
            return row if row is not None and row.get("value") is not None else None

        async def local(partition: int) -> web.Response:
            row = read(partition)
            while min_version and (row is None or row["version"] < min_version):
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return json_error(504, "timeout", version=row["version"] if row else None)
                if not p.owns(partition) or p.stopping:
                    # A rebalance moved the row away while it waited: whoever asked (this
                    # worker's on_owner, or the worker that forwarded it here) asks the new owner.
                    why = "this worker is stopping" if p.stopping else "the partition moved to another worker"
                    return moved(f"{why} while this request waited for {table}/{key}; retry (the partition's new "
                                 "owner answers)")
                if not p.parking.enter():
                    return overloaded(f"{p.parking.cap} requests are already waiting on this worker; retry")
                waiter = p.rows.park(table, partition, key_bytes)
                try:
                    await asyncio.wait_for(waiter, remaining)
                except asyncio.TimeoutError:
                    pass
                finally:
                    p.rows.unpark(table, partition, key_bytes, waiter)
                    p.parking.leave()
                row = read(partition)
            if row is None:
                return json_error(404, "not_found", table=table, key=key)
            return json_response({"table": table, "key": key, "version": row["version"], "value": row["value"]})

        wait = timeout_ms / 1000 if min_version else 0.0  # only a request that may wait is a long-poll
        return await self.peers.on_owner(request, table, key_bytes, local, extra_timeout=wait)

    async def list_rows(self, request: web.Request) -> web.Response:
        """Rows of a table in key order, over all partitions and workers, a page at a time."""
        p = self.projector
        table = request.match_info["table"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        building = self._building(table)
        if building is not None:
            return building
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)
        prefix = request.query.get("prefix", "")
        if len(prefix.encode("utf-8")) > MAX_KEY_PARAM:
            raise web.HTTPBadRequest(reason=f"prefix must be at most {MAX_KEY_PARAM} bytes")
        after = decode_cursor(request.query.get("cursor"), table)
        if not self.listings.enter():
            return overloaded(f"{MAX_LISTINGS} listings are already under way on this worker; retry")
        try:
            rows = await self._gather_until(request, table, prefix, after, limit + 1)
        finally:
            self.listings.leave()
        if rows is None:
            return retry_later("unavailable", f"some partitions of {table} have no owner yet (rebalancing); retry")
        rows.sort(key=lambda r: r["key"].encode("utf-8"))
        page = rows[:limit]
        next_cursor = encode_cursor(table, page[-1]["key"]) if len(rows) > limit else None
        return json_response({"rows": page, "next_cursor": next_cursor})

    async def _gather_until(
        self, request: web.Request, table: str, prefix: str, after: Optional[str], limit: int,
        index: Optional[tuple[str, str]] = None,
    ) -> Optional[list[dict]]:
        """:meth:`_gather_rows`, asked again every 0.2 s while a partition has no owner; None at the deadline.

        No scan outlives the deadline (``ROUTE_DEADLINE`` s from the first try).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROUTE_DEADLINE
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                rows = await asyncio.wait_for(self._gather_rows(request, table, prefix, after, limit, index), remaining)
            except asyncio.TimeoutError:
                return None
            if rows is not None:
                return rows
            if loop.time() + 0.2 >= deadline:
                return None
            await asyncio.sleep(0.2)

    async def _gather_rows(
        self, request: web.Request, table: str, prefix: str, after: Optional[str], limit: int,
        index: Optional[tuple[str, str]] = None,
    ) -> Optional[list[dict]]:
        """Up to ``limit`` rows after ``after`` from every partition, asking each owner; None if one has no owner.

        With ``index`` (an index name and value): the rows with that index value, in place of a prefix.
        """
        p = self.projector
        by_owner: dict[Optional[str], list[int]] = {}
        for partition in range(p.partitions):
            if p.owns(partition):
                if not p.recovered:
                    return None  # being restored: ask again
                by_owner.setdefault(None, []).append(partition)
                continue
            owner = p.owner_url(table, partition)
            if not owner or owner.rstrip("/") == p.settings.url:
                return None
            by_owner.setdefault(owner, []).append(partition)
        rows: list[dict] = []
        for owner, partitions in by_owner.items():
            if owner is None:
                if index is not None:
                    rows.extend(self._scan_index_local(table, index[0], index[1], partitions, after, limit))
                else:
                    rows.extend(self._scan_local(table, partitions, prefix, after, limit))
                continue
            query = {"partitions": ",".join(map(str, partitions)), "prefix": prefix, "limit": str(limit)}
            if after is not None:
                query["after"] = after
            url = f"{owner.rstrip('/')}/internal/scan/{table}"
            if index is not None:
                del query["prefix"]
                query["value"] = index[1]
                url = f"{owner.rstrip('/')}/internal/index/{table}/{index[0]}"
            try:
                async with self.peers.session.get(url, params=query, headers=peer_headers(p.settings)) as r:
                    if r.status != 200:
                        return None  # the owner moved meanwhile: ask again
                    rows.extend((await r.json())["rows"])
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
                # The owner is gone or moving: the caller asks again until its deadline.
                log.debug("scan of %s partitions %s at %s failed: %r", table, partitions, owner, exc)
                return None
        return rows

    def _scan_local(
        self, table: str, partitions: list[int], prefix: str, after: Optional[str], limit: int
    ) -> list[dict]:
        """Up to ``limit`` rows in key order from this worker's ``partitions``."""
        p = self.projector
        prefix_b = prefix.encode("utf-8")
        start = prefix_b
        if after is not None:
            start = max(start, after.encode("utf-8") + b"\x00")
        iterators = []
        for partition in partitions:
            iterators.append(p.store.scan(table, partition, prefix_b, start=start))
        out = []
        for key, raw in heapq.merge(*iterators, key=lambda kv: kv[0]):
            row = orjson.loads(raw)
            if row.get("value") is None:
                continue
            out.append({"key": key.decode("utf-8", "replace"), "version": row["version"], "value": row["value"]})
            if len(out) >= limit:
                break
        return out

    def _own_partitions(self, request: web.Request, table: str) -> "list[int] | web.Response":
        """The ``partitions`` an internal scan asks for, all this worker's (restored); else the answer to give."""
        p = self.projector
        building = self._building(table)
        if building is not None:
            return building
        try:
            partitions = [int(x) for x in request.query.get("partitions", "").split(",") if x]
        except ValueError:
            raise web.HTTPBadRequest(reason="partitions must be a comma-separated list of integers") from None
        if not partitions or any(not 0 <= x < p.partitions for x in partitions):
            raise web.HTTPBadRequest(reason=f"partitions must be between 0 and {p.partitions - 1}")
        not_owned = [x for x in partitions if not p.owns(x) or not p.recovered]
        if not_owned:
            return json_error(409, "not_owner", partitions=not_owned)
        return partitions

    async def internal_scan(self, request: web.Request) -> web.Response:
        """Rows of the listed partitions, which this worker must own (used by :meth:`list_rows`)."""
        p = self.projector
        table = request.match_info["table"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        partitions = self._own_partitions(request, table)
        if isinstance(partitions, web.Response):
            return partitions
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT + 1, cap=True)
        prefix = request.query.get("prefix", "")
        after = request.query.get("after")
        return json_response({"rows": self._scan_local(table, partitions, prefix, after, limit)})

    # --- secondary indexes (INDEXES) ------------------------------------------------

    async def index_rows(self, request: web.Request) -> web.Response:
        """The rows whose index ``index`` has ``value``, in key order, over all partitions and workers."""
        p = self.projector
        table = request.match_info["table"]
        index = request.match_info["index"]
        value = request.match_info["value"]
        model = p.model(table)
        if model is None:
            return json_error(404, "unknown_table", table=table)
        if index not in model.indexes:
            return json_error(404, "unknown_index", table=table, index=index, indexes=list(model.indexes))
        building = self._building(table)
        if building is not None:
            return building
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)
        after = decode_cursor(request.query.get("cursor"), table, index, value)
        if not indexable(value):
            # No row is ever found under it (projector.core.indexes.indexable): nothing to ask anyone.
            return json_response({"rows": [], "next_cursor": None})
        if not self.listings.enter():
            return overloaded(f"{MAX_LISTINGS} listings are already under way on this worker; retry")
        try:
            rows = await self._gather_until(request, table, "", after, limit + 1, index=(index, value))
        finally:
            self.listings.leave()
        if rows is None:
            return retry_later("unavailable", f"some partitions of {table} have no owner yet (rebalancing); retry")
        rows.sort(key=lambda r: r["key"].encode("utf-8"))
        page = rows[:limit]
        next_cursor = encode_cursor(table, page[-1]["key"], index, value) if len(rows) > limit else None
        return json_response({"rows": page, "next_cursor": next_cursor})

    def _scan_index_local(
        self, table: str, index: str, value: str, partitions: list[int], after: Optional[str], limit: int
    ) -> list[dict]:
        """Up to ``limit`` rows in key order from this worker's ``partitions`` whose ``index`` has ``value``.

        An entry whose row no longer has that index value (its write and the
        row's are not one: a reader may come in between) is passed over.
        """
        p = self.projector
        model = p.model(table)
        itable = index_table(table)
        prefix = entry_prefix(index, value)
        start = prefix + after.encode("utf-8") + b"\x00" if after is not None else prefix

        def entries(partition: int):
            for key, _ in p.store.scan(itable, partition, prefix, start=start):
                yield key[len(prefix):], partition

        out = []
        for key, partition in heapq.merge(*(entries(x) for x in partitions), key=lambda kp: kp[0]):
            raw = p.store.get(table, partition, key)
            row = orjson.loads(raw) if raw is not None else None
            if row is None or row.get("value") is None:
                continue
            try:
                if value not in index_values(model, index, row["value"]):
                    continue
            except BadIndexValue:
                continue
            out.append({"key": key.decode("utf-8", "replace"), "version": row["version"], "value": row["value"]})
            if len(out) >= limit:
                break
        return out

    async def internal_index(self, request: web.Request) -> web.Response:
        """Rows of the listed partitions with one index value (for :meth:`index_rows`); this worker must own them."""
        p = self.projector
        table = request.match_info["table"]
        index = request.match_info["index"]
        model = p.model(table)
        if model is None:
            return json_error(404, "unknown_table", table=table)
        if index not in model.indexes:
            return json_error(404, "unknown_index", table=table, index=index)
        value = request.query.get("value", "")
        if not indexable(value):
            raise web.HTTPBadRequest(reason="value must be a non-empty index value")
        partitions = self._own_partitions(request, table)
        if isinstance(partitions, web.Response):
            return partitions
        limit = int_param(request, "limit", 100, 1, MAX_LIMIT + 1, cap=True)
        after = request.query.get("after")
        return json_response({"rows": self._scan_index_local(table, index, value, partitions, after, limit)})
