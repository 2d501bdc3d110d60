"""projector's HTTP API (CONTRACT §5), mounted on Faust's aiohttp web server.

Every answer is JSON. Errors are ``{"error": "<code>", ...}``; the only 5xx
answers are 503 and 504, each with a JSON body.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import aiohttp
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from projector.runtime.kafka import KAFKA_WRITE_TIMEOUT
from projector.core.partitioning import partition_for

if TYPE_CHECKING:
    from projector.runtime.app import Projector

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_LIMIT = 1000
#: Requests a worker keeps waiting for a row version at once; more get 503.
MAX_PARKED = 1000
#: Longest key prefix or cursor key accepted, in bytes.
MAX_KEY_PARAM = 1024
#: Faust's own keys in each RocksDB partition database (its changelog offset).
FAUST_KEY = b"__faust\x00"
#: Longest a request may wait for a version or offset (CONTRACT §5: timeout_ms <= 30000).
MAX_WAIT_MS = 30000
#: Longest GET /deadletters reads the dead-letter topic before it answers 503.
DEADLETTERS_TIMEOUT = 15.0
#: How long a key lookup keeps retrying while its partition has no owner (rebalance).
ROUTE_DEADLINE = 10.0
FORWARD_TIMEOUT = 15.0
FORWARDED_HEADER = "X-Projector-Forwarded"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def json_error(status: int, code: str, **extra: Any) -> web.Response:
    return json_response({"error": code, **extra}, status=status)


_HTTP_CODES = {
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    414: "too_large",
}


def _middlewares(projector: "Projector") -> list:
    settings = projector.settings
    open_warning_logged = False

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status)
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

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal open_warning_logged
        token = settings.api_token
        if token is None:
            if not open_warning_logged:
                open_warning_logged = True
                log.warning("PROJECTOR_API_TOKEN is not set: the HTTP API is open to anyone who can reach it")
            return await handler(request)
        if request.path == "/healthz":
            return await handler(request)
        ok = _bearer(request, token) or (settings.admin_token is not None and _bearer(request, settings.admin_token))
        if not ok and request.path == "/" and request.method == "GET":
            # A browser cannot send a header when it opens a page: the status page
            # (which holds no data itself) takes the token as ?token=, and its
            # requests for data send it as a header.
            given = request.query.get("token", "").encode("utf-8", "surrogateescape")
            ok = hmac.compare_digest(given, token.encode()) or (
                settings.admin_token is not None and hmac.compare_digest(given, settings.admin_token.encode())
            )
        if not ok:
            return json_error(401, "unauthorized", detail="missing or wrong bearer token")
        return await handler(request)

    return [json_errors, auth]


def web_application_options(projector: "Projector") -> dict[str, Any]:
    return {"middlewares": _middlewares(projector), "client_max_size": MAX_BODY}


def _int_param(request: web.Request, name: str, default: int, minimum: int, maximum: Optional[int] = None,
               cap: bool = False) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise web.HTTPBadRequest(reason=f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        if cap:
            return maximum
        raise web.HTTPBadRequest(reason=f"{name} must be at most {maximum}, got {value}")
    return value


def _encode_cursor(table: str, key: str) -> str:
    """An opaque cursor: the last key returned, for this table."""
    return base64.urlsafe_b64encode(orjson.dumps([table, key])).decode().rstrip("=")


def _decode_cursor(cursor: Optional[str], table: str) -> Optional[str]:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_table, key = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise web.HTTPBadRequest(reason="cursor is not one this API gave out") from None
    if cursor_table != table or not isinstance(key, str) or len(key.encode("utf-8")) > MAX_KEY_PARAM:
        raise web.HTTPBadRequest(reason=f"cursor does not belong to table {table}")
    return key


def _bearer(request: web.Request, token: str) -> bool:
    """True when the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    given = request.headers.get("Authorization", "")
    # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes they were.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode())


def _forwarded_headers(request: web.Request) -> dict[str, str]:
    """Headers of a request one worker sends another on a client's behalf: marked, with its credentials."""
    headers = {FORWARDED_HEADER: "1"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    return headers


def _broker_unreachable(projector: "Projector", **extra: Any) -> Optional[web.Response]:
    """503 before anything is written, while this worker cannot reach Kafka; None when it can."""
    broker = projector.broker
    if broker.reachable:
        return None
    snapshot = broker.snapshot()
    return json_error(503, "broker_unreachable", broker=snapshot, **extra,
                      detail=f"Kafka at {projector.settings.broker} is unreachable since {snapshot['since']}: "
                             "nothing was written; retry once it is back")


def _write_timeout(what: str, hint: str) -> web.Response:
    return json_error(504, "timeout", detail=f"Kafka did not acknowledge {what} within {KAFKA_WRITE_TIMEOUT:g} s: "
                                             f"the outcome is unknown, it may still be written ({hint})")


async def post_internal(projector: "Projector", url: str, path: str, body: Any) -> None:
    """POST a JSON body to another worker's internal endpoint, with this deployment's API token."""
    headers = {FORWARDED_HEADER: "1", "Content-Type": "application/json"}
    if projector.settings.api_token is not None:
        headers["Authorization"] = f"Bearer {projector.settings.api_token}"
    session = getattr(projector, "internal_session", None)
    if session is None or session.closed:
        # One session (and its kept-alive connections) for all of this worker's internal calls.
        session = projector.internal_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT))
    async with session.post(url.rstrip("/") + path, data=orjson.dumps(body), headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}{path} answered {r.status}: {(await r.read())[:200]!r}")


def _is_admin(request: web.Request, settings: Any) -> bool:
    return settings.admin_token is None or _bearer(request, settings.admin_token)


class Views:
    def __init__(self, projector: "Projector") -> None:
        self.projector = projector
        self._session: Optional[aiohttp.ClientSession] = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT))
        return self._session

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

    # --- the control table (CONTRACT §3) -------------------------------------------

    async def get_control(self, request: web.Request) -> web.Response:
        """This worker's control table; ``min_offset`` + ``timeout_ms`` wait until it has applied that record."""
        control = self.projector.control
        min_offset = _int_param(request, "min_offset", -1, -1)
        timeout_ms = _int_param(request, "timeout_ms", 0, 0, MAX_WAIT_MS)
        if control.offset < min_offset and not await control.wait_for_offset(min_offset, timeout_ms / 1000):
            return json_error(504, "timeout", offset=control.offset)
        return json_response(control.snapshot())

    async def get_control_key(self, request: web.Request) -> web.Response:
        control = self.projector.control
        key = request.match_info["key"]
        if key not in control.entries:
            return json_error(404, "not_found", key=key, offset=control.offset)
        return json_response({"key": key, "value": control.entries[key], "offset": control.offset})

    async def put_control(self, request: web.Request) -> web.Response:
        if not _is_admin(request, self.projector.settings):
            return json_error(401, "unauthorized", detail="writing the control table needs the admin token")
        raw = await request.read()
        if not raw.strip():
            return json_error(400, "invalid", detail="the body must be a JSON value (null deletes the key)")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        return await self._write_control(request.match_info["key"], value)

    async def delete_control(self, request: web.Request) -> web.Response:
        if not _is_admin(request, self.projector.settings):
            return json_error(401, "unauthorized", detail="writing the control table needs the admin token")
        return await self._write_control(request.match_info["key"], None)

    async def _write_control(self, key: str, value: Any) -> web.Response:
        from projector.core.control import ControlError, check_entry

        try:
            check_entry(key, value)
        except ControlError as exc:
            return json_error(400, "invalid", detail=str(exc))
        unreachable = _broker_unreachable(self.projector)
        if unreachable is not None:
            return unreachable
        try:
            offset = await self.projector.write_control(key, value)
        except asyncio.TimeoutError:
            return _write_timeout("the control record", "GET /control shows whether it was applied")
        except MessageSizeTooLargeError:
            return json_error(413, "too_large", detail="the value is larger than the broker accepts for one record")
        except KafkaError as exc:
            return json_error(503, "unavailable", detail=f"writing the control topic failed: {exc!r}")
        return json_response({"key": key, "offset": offset}, status=202)

    async def list_tables(self, request: web.Request) -> web.Response:
        p = self.projector
        return json_response(
            {
                "tables": [
                    {"name": m.name, "description": m.description, "partitions": p.partitions}
                    for m in p.catalog.all
                ]
            }
        )

    async def _on_owner(
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
                return await self._forward(request, owner, extra_timeout)
            if time.monotonic() >= deadline:
                return json_error(
                    503,
                    "unavailable",
                    detail=f"partition {partition} of {table} has no owner yet (rebalancing); retry",
                )
            await asyncio.sleep(0.2)

    async def get_row(self, request: web.Request) -> web.Response:
        """One row. ``min_version`` + ``timeout_ms``: wait on the owner until the row reaches that version."""
        p = self.projector
        table = request.match_info["table"]
        key = request.match_info["key"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        min_version = _int_param(request, "min_version", 0, 0)
        timeout_ms = _int_param(request, "timeout_ms", 0, 0, MAX_WAIT_MS)
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
                if remaining <= 0 or not p.owns(partition):
                    return json_error(504, "timeout", version=row["version"] if row else None)
                if p.parked_requests >= MAX_PARKED:
                    return json_error(503, "unavailable", detail=f"{MAX_PARKED} requests are already waiting; retry")
                waiter = p.park_row(table, partition, key_bytes)
                try:
                    await asyncio.wait_for(waiter, remaining)
                except asyncio.TimeoutError:
                    pass
                finally:
                    p.unpark_row(table, partition, key_bytes, waiter)
                row = read(partition)
            if row is None:
                return json_error(404, "not_found", table=table, key=key)
            return json_response({"table": table, "key": key, "version": row["version"], "value": row["value"]})

        return await self._on_owner(request, table, key_bytes, local, extra_timeout=timeout_ms / 1000)

    async def list_rows(self, request: web.Request) -> web.Response:
        """Rows of a table in key order, over all partitions and workers, a page at a time."""
        p = self.projector
        table = request.match_info["table"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)
        prefix = request.query.get("prefix", "")
        if len(prefix.encode("utf-8")) > MAX_KEY_PARAM:
            raise web.HTTPBadRequest(reason=f"prefix must be at most {MAX_KEY_PARAM} bytes")
        after = _decode_cursor(request.query.get("cursor"), table)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROUTE_DEADLINE
        while True:
            rows = await self._gather_rows(request, table, prefix, after, limit + 1)
            if rows is not None:
                break
            if loop.time() >= deadline:
                return json_error(503, "unavailable", detail=f"some partitions of {table} have no owner yet (rebalancing); retry")
            await asyncio.sleep(0.2)
        rows.sort(key=lambda r: r["key"].encode("utf-8"))
        page = rows[:limit]
        next_cursor = _encode_cursor(table, page[-1]["key"]) if len(rows) > limit else None
        return json_response({"rows": page, "next_cursor": next_cursor})

    async def _gather_rows(
        self, request: web.Request, table: str, prefix: str, after: Optional[str], limit: int
    ) -> Optional[list[dict]]:
        """Up to ``limit`` rows after ``after`` from every partition, asking each owner; None if one has no owner."""
        p = self.projector
        by_owner: dict[Optional[str], list[int]] = {}
        for partition in range(p.partitions):
            if p.owns(partition):
                by_owner.setdefault(None, []).append(partition)
                continue
            owner = p.owner_url(table, partition)
            if not owner or owner.rstrip("/") == p.settings.url:
                return None
            by_owner.setdefault(owner, []).append(partition)
        rows: list[dict] = []
        for owner, partitions in by_owner.items():
            if owner is None:
                rows.extend(self._scan_local(table, partitions, prefix, after, limit))
                continue
            query = {"partitions": ",".join(map(str, partitions)), "prefix": prefix, "limit": str(limit)}
            if after is not None:
                query["after"] = after
            url = f"{owner.rstrip('/')}/internal/scan/{table}"
            try:
                async with self.session.get(url, params=query, headers=_forwarded_headers(request)) as r:
                    if r.status != 200:
                        return None  # the owner moved meanwhile: ask again
                    rows.extend((await r.json())["rows"])
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
                return None
        return rows

    def _scan_local(self, table: str, partitions: list[int], prefix: str, after: Optional[str], limit: int) -> list[dict]:
        """Up to ``limit`` rows in key order from this worker's ``partitions``."""
        p = self.projector
        prefix_b = prefix.encode("utf-8")
        start = prefix_b
        if after is not None:
            start = max(start, after.encode("utf-8") + b"\x00")
        iterators = []
        for partition in partitions:
            iterators.append(
                (k, v) for k, v in p.store.scan(table, partition, prefix_b, start=start) if not k.startswith(FAUST_KEY)
            )
        out = []
        for key, raw in heapq.merge(*iterators, key=lambda kv: kv[0]):
            row = orjson.loads(raw)
            if row.get("value") is None:
                continue
            out.append({"key": key.decode("utf-8", "replace"), "version": row["version"], "value": row["value"]})
            if len(out) >= limit:
                break
        return out

    async def internal_scan(self, request: web.Request) -> web.Response:
        """Rows of the listed partitions, which this worker must own (used by :meth:`list_rows`)."""
        p = self.projector
        table = request.match_info["table"]
        if p.model(table) is None:
            return json_error(404, "unknown_table", table=table)
        try:
            partitions = [int(x) for x in request.query.get("partitions", "").split(",") if x]
        except ValueError:
            raise web.HTTPBadRequest(reason="partitions must be a comma-separated list of integers") from None
        if not partitions or any(not 0 <= x < p.partitions for x in partitions):
            raise web.HTTPBadRequest(reason=f"partitions must be between 0 and {p.partitions - 1}")
        not_owned = [x for x in partitions if not p.owns(x)]
        if not_owned:
            return json_error(409, "not_owner", partitions=not_owned)
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT + 1, cap=True)
        prefix = request.query.get("prefix", "")
        after = request.query.get("after")
        return json_response({"rows": self._scan_local(table, partitions, prefix, after, limit)})

    async def aggregate_events(self, request: web.Request) -> web.Response:
        from projector.core import index as agg
        from projector.core.engine import INDEX

        p = self.projector
        aid = request.match_info["id"]
        from_version = _int_param(request, "from_version", 1, 1)
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)

        async def local(partition: int) -> web.Response:
            meta_raw = p.store.get(INDEX, partition, agg.meta_key(aid))
            if meta_raw is None:
                return json_error(404, "not_found", aggregate_id=aid)
            meta = agg.Meta.from_json(orjson.loads(meta_raw))
            chunks = p.store.scan(INDEX, partition, agg.event_prefix(aid), start=agg.event_key(aid, from_version))
            events, next_version = agg.stored_events(meta, chunks, from_version, limit)
            return json_response({"aggregate_id": aid, "events": events, "next_version": next_version})

        return await self._on_owner(request, INDEX, aid.encode("utf-8"), local)

    async def release(self, request: web.Request) -> web.Response:
        p = self.projector
        if not _is_admin(request, p.settings):
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
        unreachable = _broker_unreachable(p)
        if unreachable is not None:
            return unreachable
        topic = p.commands_topic.get_topic_name()
        command = {"action": "release", "skip_to": skip_to}
        key = aid.encode("utf-8")
        try:
            meta = await p.produce(topic, key, orjson.dumps(command), partition_for(key, p.partitions),
                                   KAFKA_WRITE_TIMEOUT)
        except asyncio.TimeoutError:
            return _write_timeout("the release", "sending it again is harmless")
        return json_response({"aggregate_id": aid, "skip_to": skip_to, "offset": meta.offset}, status=202)

    # --- the command side (CONTRACT §5, POST /commands) ----------------------------------

    async def post_command(self, request: web.Request) -> web.Response:
        """Take a command, have the writer of its aggregate decide it, and answer with the decision."""
        from projector.core.decider import InvalidCommand
        from projector.core.commands import check_command

        p = self.projector
        timeout_ms = _int_param(request, "timeout_ms", 10000, 1, MAX_WAIT_MS)
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        try:
            command = check_command(body, p.catalog)
        except InvalidCommand as exc:
            command_id = body.get("command_id") if isinstance(body, dict) else None
            return json_error(400, "invalid", detail=str(exc),
                              **({"command_id": command_id} if isinstance(command_id, str) else {}))
        if not p.control.commands_enabled:
            return json_error(503, "commands_disabled", command_id=command["command_id"],
                              detail="commands.enabled is false in the control table")
        ready, detail = p.readiness()
        if not ready:
            return json_error(503, "not_ready", command_id=command["command_id"], detail=detail)
        unreachable = _broker_unreachable(p, command_id=command["command_id"])
        if unreachable is not None:
            return unreachable
        try:
            status, answer = await p.submit_command(command, timeout_ms / 1000)
        except KafkaError as exc:
            return json_error(503, "unavailable", command_id=command["command_id"],
                              detail=f"writing the command topic failed: {exc!r}")
        return json_response(answer, status=status)

    async def internal_command_answers(self, request: web.Request) -> web.Response:
        """Answers from the writers, for commands this worker took (see :meth:`Projector.submit_command`)."""
        shape = "a JSON array of {command_id: string, status: integer, body: object}"
        try:
            items = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return json_error(400, "invalid", detail=f"body is not JSON: {exc}")
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("command_id"), str) and isinstance(i.get("body"), dict)
            and isinstance(i.get("status"), int) and not isinstance(i.get("status"), bool) and 100 <= i["status"] <= 599
            for i in items
        ):
            return json_error(400, "invalid", detail=f"expected {shape}")
        for item in items:
            self.projector.resolve_command(item["command_id"], item["status"], item["body"])
        return json_response({"delivered": len(items)})

    async def deadletters(self, request: web.Request) -> web.Response:
        from projector.runtime.deadletters import read_recent

        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT, cap=True)
        unreachable = _broker_unreachable(self.projector)
        if unreachable is not None:
            return unreachable
        try:
            rows = await asyncio.wait_for(read_recent(self.projector.settings, limit), DEADLETTERS_TIMEOUT)
        except asyncio.TimeoutError:
            return json_error(503, "unavailable",
                              detail=f"reading the dead-letter topic took more than {DEADLETTERS_TIMEOUT:g} s")
        except Exception as exc:
            log.warning("reading dead letters failed: %r", exc)
            return json_error(503, "unavailable", detail=f"cannot read the dead-letter topic: {exc}")
        return json_response({"deadletters": rows})

    async def metrics(self, request: web.Request) -> web.Response:
        from projector.web.metrics import prometheus_text

        return web.Response(text=prometheus_text(self.projector), content_type="text/plain")

    async def _forward(self, request: web.Request, owner: str, extra_timeout: float = 0.0) -> web.Response:
        """Send the request on to the owning worker, keeping its status, JSON body and headers."""
        url = owner.rstrip("/") + request.rel_url.path_qs
        headers = _forwarded_headers(request)
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
                    headers={"X-Projector-Served-By": owner},
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return json_error(503, "unavailable", detail=f"owner {owner} did not answer: {exc!r}")


def install_routes(app: web.Application, projector: "Projector") -> None:
    views = Views(projector)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/tables", views.list_tables)
    app.router.add_get("/tables/{table}", views.list_rows)
    app.router.add_get("/tables/{table}/{key}", views.get_row)
    app.router.add_get("/internal/scan/{table}", views.internal_scan)
    app.router.add_get("/aggregates/{id}/events", views.aggregate_events)
    app.router.add_post("/aggregates/{id}/release", views.release)
    app.router.add_post("/commands", views.post_command)
    app.router.add_post("/internal/command-answers", views.internal_command_answers)
    app.router.add_get("/control", views.get_control)
    app.router.add_get("/control/{key:.+}", views.get_control_key)
    app.router.add_put("/control/{key:.+}", views.put_control)
    app.router.add_delete("/control/{key:.+}", views.delete_control)
    app.router.add_get("/deadletters", views.deadletters)
    app.router.add_get("/metrics", views.metrics)
    from projector.web import openapi, status as statuspage

    openapi.install(app, projector)
    statuspage.install(app, projector)
