"""projector.web over HTTP, without Kafka: the middlewares and the views' own answers.

An aiohttp application built as the worker builds it (``web_application_options``
and ``install_routes``) around a stand-in projector with a real catalog and a real
control table; whatever would need Kafka or Faust is a mock. Each test drives it
with aiohttp's test client.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from projector.core.catalog import load_catalog
from projector.core.control import ControlState
from projector.core.lifecycle import TableState
from projector.runtime.config import Settings
from projector.runtime.waiters import ParkingLimit
from projector.web.forwarding import Peers
from projector.web.middleware import MAX_BODY, web_application_options
from projector.web.params import MAX_KEY_PARAM
from projector.web.routes import install_routes

TABLES_DIR = Path(__file__).resolve().parents[3] / "tables"
API, ADMIN = "api-token", "admin-token"
#: ``call(..., token=PEER)`` sends the worker-to-worker header with the settings' peer token.
PEER = object()


@pytest.fixture(scope="module")
def catalog() -> Any:
    return load_catalog(TABLES_DIR)


@pytest.fixture
def projector(catalog: Any) -> Any:
    fake = mock.MagicMock(name="projector")
    fake.catalog = catalog
    fake.partitions = 4
    fake.settings = Settings(api_token=API, admin_token=ADMIN, web_port=1, broker="kafka://127.0.0.1:1")
    fake.control = ControlState(catalog.control_settings)
    fake.model = catalog.get
    fake.states = {m.name: TableState(m, m.version) for m in catalog.models}
    fake.builds.summary.return_value = None
    fake.stopping = False
    fake.recovered = True
    fake.parking = ParkingLimit(fake.settings.max_parked)
    fake.readiness.return_value = (True, "ready")
    fake.broker.reachable = True
    fake.broker.snapshot.return_value = {"reachable": True, "since": "2026-01-01T00:00:00Z"}
    return fake


Call = Callable[..., Awaitable[tuple[int, Any, Any]]]


def serve(projector: Any, scenario: Callable[[Call], Awaitable[None]]) -> None:
    """Run ``scenario(call)`` against the worker's application; ``call`` answers (status, body, headers)."""

    async def main() -> None:
        app = web.Application(**web_application_options(projector))
        install_routes(app, projector)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:

            async def call(method: str, path: str, token: Any = API, **kwargs: Any) -> tuple[int, Any, Any]:
                if token == PEER:
                    headers = {"X-Projector-Peer": projector.settings.peer_secret}
                else:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                r = await client.request(method, path, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)
                raw = await r.read()
                body = orjson.loads(raw) if r.content_type == "application/json" else raw.decode()
                return r.status, body, r.headers

            await scenario(call)

    asyncio.run(main())


# --- the middlewares ----------------------------------------------------------------


def test_tokens(projector: Any) -> None:
    async def scenario(call: Call) -> None:
        assert (await call("GET", "/healthz", token=None))[:2] == (200, {"status": "ok"})
        status, body, _ = await call("GET", "/tables", token=None)
        assert (status, body["error"]) == (401, "unauthorized")
        assert (await call("GET", "/tables", token="wrong"))[0] == 401
        status, body, _ = await call("GET", "/tables")
        assert status == 200 and [t["name"] for t in body["tables"]] == [m.name for m in projector.catalog.all]
        assert (await call("GET", "/tables", token=ADMIN))[0] == 200, "the admin token reads too"
        # The status page takes the token from the query (a browser cannot send a header).
        status, page, _ = await call("GET", f"/?token={API}", token=None)
        assert status == 200 and "<html" in page
        assert (await call("GET", "/?token=wrong", token=None))[0] == 401
        assert (await call("GET", f"/status?token={API}", token=None))[0] == 401, "only the page itself"

    serve(projector, scenario)


def test_http_errors_are_json(projector: Any) -> None:
    async def scenario(call: Call) -> None:
        status, body, _ = await call("GET", "/nowhere")
        assert (status, body["error"]) == (404, "not_found")
        status, body, headers = await call("DELETE", "/tables")
        assert (status, body["error"]) == (405, "method_not_allowed")
        assert "GET" in headers["Allow"]
        status, body, _ = await call("POST", "/commands", data=b"x" * (MAX_BODY + 1),
                                     headers={"Content-Type": "application/json"})
        assert (status, body["error"]) == (413, "too_large")

    serve(projector, scenario)


def test_an_unexpected_error_is_a_logged_503(projector: Any, caplog: pytest.LogCaptureFixture) -> None:
    projector.readiness.side_effect = RuntimeError("boom")

    async def scenario(call: Call) -> None:
        status, body, _ = await call("GET", "/readyz")
        assert (status, body) == (503, {"error": "unavailable", "detail": "RuntimeError: boom"})

    with caplog.at_level(logging.ERROR, logger="projector.web.middleware"):
        serve(projector, scenario)
    assert any("GET /readyz failed" in r.getMessage() and r.exc_info for r in caplog.records)


# --- the views' own answers -----------------------------------------------------------


def test_tables_refuse_unknown_tables_and_bad_parameters(projector: Any) -> None:
    async def scenario(call: Call) -> None:
        for path in ("/tables/nope", "/tables/nope/key", "/internal/scan/nope?partitions=0"):
            status, body, _ = await call("GET", path, token=PEER if path.startswith("/internal/") else API)
            assert (status, body) == (404, {"error": "unknown_table", "table": "nope"}), path
        for query in ("limit=0", "limit=x", "cursor=nonsense", "limit=1_0", "limit=+5", "limit=%205", "limit=%D9%A3",
                      f"prefix={'p' * (MAX_KEY_PARAM + 1)}"):
            status, body, _ = await call("GET", f"/tables/accounts?{query}")
            assert (status, body["error"]) == (400, "invalid"), query
        status, body, _ = await call("GET", "/tables/accounts/k?timeout_ms=30001")
        assert (status, body["error"]) == (400, "invalid")

    serve(projector, scenario)


def test_status_takes_only_the_documented_values_of_all(projector: Any) -> None:
    """GET /status?all= takes exactly the values the OpenAPI document lists (no case folding, no blanks)."""
    async def scenario(call: Call) -> None:
        for value in ("TRUE", " 1", "Yes", "2"):
            status, body, _ = await call("GET", f"/status?all={value}")
            assert (status, body["error"]) == (400, "invalid"), value

    serve(projector, scenario)


def test_control_writes_need_the_admin_token_and_a_value_the_setting_takes(projector: Any) -> None:
    async def scenario(call: Call) -> None:
        status, body, _ = await call("PUT", "/control/commands.enabled", data=b"false")
        assert (status, body["error"]) == (401, "unauthorized")
        status, body, _ = await call("PUT", "/control/commands.enabled", token=ADMIN, data=b"1")
        assert (status, body["error"]) == (400, "invalid") and "commands.enabled" in body["detail"]
        # A setting a read model declares (CONTROL) is checked the same way.
        for key in projector.catalog.control_settings:
            status, body, _ = await call("PUT", f"/control/{key}", token=ADMIN, data=b'"not a number"')
            assert (status, body["error"]) == (400, "invalid"), key
        status, body, _ = await call("PUT", "/control/anything", token=ADMIN, data=b"not json")
        assert (status, body["error"]) == (400, "invalid")
        # A key with a line break reaches the view (not a 404 from the router) and is refused as the document says.
        for method in ("PUT", "DELETE"):
            status, body, _ = await call(method, "/control/a%0Ab", token=ADMIN, data=b"1")
            assert (status, body["error"]) == (400, "invalid"), method
        projector.write_control.assert_not_called()

    serve(projector, scenario)


def test_control_reads(projector: Any) -> None:
    projector.control.apply(b"feature.x", b'{"on": true}', 0)

    async def scenario(call: Call) -> None:
        assert (await call("GET", "/control"))[:2] == (200, {"offset": 0, "entries": {"feature.x": {"on": True}}})
        assert (await call("GET", "/control/feature.x"))[:2] == (200, {"key": "feature.x", "value": {"on": True},
                                                                         "offset": 0})
        status, body, _ = await call("GET", "/control/missing")
        assert (status, body["error"]) == (404, "not_found")

    serve(projector, scenario)


def test_commands_are_checked_then_refused_while_disabled(projector: Any) -> None:
    projector.control.apply(b"commands.enabled", b"false", 0)
    command = {"aggregate_type": "account", "aggregate_id": "a-1", "type": "Deposit", "data": {"amount": 5},
               "command_id": "c-1"}

    async def scenario(call: Call) -> None:
        status, body, _ = await call("POST", "/commands", data=b"{")
        assert (status, body["error"]) == (400, "invalid")
        status, body, _ = await call("POST", "/commands", data=orjson.dumps({**command, "aggregate_type": "nope"}))
        assert (status, body["error"], body["command_id"]) == (400, "invalid", "c-1")
        status, body, _ = await call("POST", "/commands", data=orjson.dumps(command))
        assert (status, body["error"], body["command_id"]) == (503, "commands_disabled", "c-1")

    serve(projector, scenario)


def test_writes_answer_503_while_the_broker_is_unreachable(projector: Any) -> None:
    projector.broker.reachable = False
    projector.broker.snapshot.return_value = {"reachable": False, "since": "2026-01-01T00:00:00Z"}

    async def scenario(call: Call) -> None:
        for method, path, data in (("PUT", "/control/feature.x", b"1"), ("DELETE", "/control/feature.x", None),
                                   ("POST", "/aggregates/a-1/release", b"{}"), ("GET", "/deadletters", None)):
            status, body, _ = await call(method, path, token=ADMIN, data=data)
            assert (status, body["error"]) == (503, "broker_unreachable"), path

    serve(projector, scenario)


def test_internal_command_answers_reach_the_waiting_requests(projector: Any) -> None:
    async def scenario(call: Call) -> None:
        items = [{"aggregate_id": "a-1", "command_id": "c-1", "status": 200, "body": {"version": 1}}]
        assert (await call("POST", "/internal/command-answers", data=orjson.dumps(items), token=PEER))[:2] == \
            (200, {"delivered": 1})
        status, body, _ = await call("POST", "/internal/command-answers", data=b'[{"command_id": 1}]', token=PEER)
        assert (status, body["error"]) == (400, "invalid")
        # Waiters are keyed by aggregate and command id: an answer without its aggregate is refused.
        unscoped = orjson.dumps([{"command_id": "c-1", "status": 200, "body": {}}])
        status, body, _ = await call("POST", "/internal/command-answers", data=unscoped, token=PEER)
        assert (status, body["error"]) == (400, "invalid")

    serve(projector, scenario)
    projector.commands.resolve.assert_called_once_with("a-1", "c-1", 200, {"version": 1})


# --- worker-to-worker trust and limits -----------------------------------------------


class FakeOwner:
    """Another worker: records the headers of every request; ``hold`` keeps long-polls open until released."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.release = asyncio.Event()
        self.held = 0
        self.hang_scans = False

    def app(self) -> web.Application:
        async def any_route(request: web.Request) -> web.Response:
            self.seen.append((request.path, dict(request.headers)))
            if request.query.get("min_version") or (self.hang_scans and request.path.startswith("/internal/scan/")):
                self.held += 1
                await self.release.wait()
            if request.path.startswith("/internal/scan/"):
                return web.json_response({"rows": []})
            if request.path == "/status":
                return web.json_response({"worker": "owner", "ready": True})
            return web.json_response({"table": "accounts", "key": "k", "version": 1, "value": {}})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_route)
        return app


def with_owner(projector: Any, scenario: Callable[[Call, FakeOwner, str], Awaitable[None]]) -> None:
    """Run ``scenario`` with every partition owned by a fake other worker."""
    owner = FakeOwner()

    async def main() -> None:
        async with TestServer(owner.app(), host="127.0.0.1") as server:
            url = str(server.make_url("")).rstrip("/")
            projector.owns.return_value = False
            projector.owner_url.return_value = url
            projector.app.router.table_metadata.return_value = {url: {}}
            projector.app.router.tables_metadata.return_value = {url: {}}

            async def inner(call: Call) -> None:
                await scenario(call, owner, url)

            app = web.Application(**web_application_options(projector))
            install_routes(app, projector)
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:

                async def call(method: str, path: str, token: Any = API, **kwargs: Any) -> tuple[int, Any, Any]:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    r = await client.request(method, path, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)
                    raw = await r.read()
                    body = orjson.loads(raw) if r.content_type == "application/json" else raw.decode()
                    return r.status, body, r.headers

                await inner(call)

    asyncio.run(main())


def test_internal_routes_need_the_peer_token(projector: Any) -> None:
    """Fails on the old code: the API token (or none at all) opened /internal/... routes."""
    items = orjson.dumps([{"aggregate_id": "a-1", "command_id": "c-1", "status": 200, "body": {"version": 1}}])

    async def scenario(call: Call) -> None:
        for token in (API, ADMIN, None, "wrong"):
            for method, path in (("POST", "/internal/command-answers"), ("GET", "/internal/scan/accounts?partitions=0")):
                status, body, _ = await call(method, path, token=token, data=items)
                assert (status, body["error"]) == (401, "unauthorized"), (token, path)
        # The X-Projector-Forwarded mark alone opens nothing either.
        status, _, _ = await call("POST", "/internal/command-answers", data=items,
                                  headers={"X-Projector-Forwarded": "1"})
        assert status == 401
        assert (await call("POST", "/internal/command-answers", token=PEER, data=items))[0] == 200
        # The peer token reads the API, but it is not the admin token.
        assert (await call("GET", "/control", token=PEER))[0] == 200
        status, body, _ = await call("PUT", "/control/commands.enabled", token=PEER, data=b"false")
        assert (status, body["error"]) == (401, "unauthorized")

    serve(projector, scenario)
    projector.commands.resolve.assert_called_once_with("a-1", "c-1", 200, {"version": 1})


def test_the_peer_token_is_its_own_secret() -> None:
    derived = Settings(api_token=API).peer_secret
    assert derived and derived not in (API, ADMIN) and len(derived) == 64
    assert Settings(api_token=API, app_id="other").peer_secret != derived, "one per app id"
    assert Settings(api_token=API, peer_token="p").peer_secret == "p"
    assert Settings.from_env({"PROJECTOR_PEER_TOKEN": "p2"}).peer_secret == "p2"
    assert Settings().peer_secret is None, "no token at all: nothing to derive"


def test_forwarded_calls_carry_the_peer_token_never_the_clients(projector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails on the old code: the client's Authorization (here the admin token) went on to the other worker."""
    monkeypatch.setattr("projector.web.status.worker_status", lambda p: {"worker": p.settings.url})
    peer = projector.settings.peer_secret

    async def scenario(call: Call, owner: FakeOwner, url: str) -> None:
        assert (await call("GET", "/tables/accounts/k", token=ADMIN))[0] == 200
        assert (await call("GET", "/tables/accounts?limit=5", token=ADMIN))[0] == 200
        status, body, _ = await call("GET", "/status?all=1", token=ADMIN)
        assert status == 200 and any(w.get("worker") == "owner" for w in body["workers"]), body
        await Peers(projector).post(url, "/internal/command-answers", [])
        paths = [path for path, _ in owner.seen]
        assert paths == ["/tables/accounts/k", "/internal/scan/accounts", "/status", "/internal/command-answers"]
        for path, headers in owner.seen:
            assert "Authorization" not in headers, path
            assert headers.get("X-Projector-Peer") == peer, path

    with_owner(projector, scenario)


def test_a_forwarded_mark_without_the_peer_token_is_forwarded_again(projector: Any) -> None:
    """Fails on the old code: X-Projector-Forwarded alone made a worker answer itself (or 503 after 10 s)."""

    async def scenario(call: Call, owner: FakeOwner, url: str) -> None:
        status, _, headers = await call("GET", "/tables/accounts/k", headers={"X-Projector-Forwarded": "1"})
        assert status == 200 and headers["X-Projector-Served-By"] == url
        assert [path for path, _ in owner.seen] == ["/tables/accounts/k"]

    with_owner(projector, scenario)


def test_forwarded_long_polls_have_their_own_pool_and_cap(projector: Any) -> None:
    """Long-polls beyond the cap answer 503 + Retry-After; key lookups are still forwarded meanwhile."""
    projector.settings = Settings(api_token=API, admin_token=ADMIN, web_port=1, broker="kafka://127.0.0.1:1",
                                  max_forwarded_waits=2)

    async def scenario(call: Call, owner: FakeOwner, url: str) -> None:
        polls = [asyncio.ensure_future(call("GET", "/tables/accounts/k?min_version=9&timeout_ms=30000"))
                 for _ in range(2)]
        deadline = asyncio.get_running_loop().time() + 10
        while owner.held < 2:
            assert asyncio.get_running_loop().time() < deadline, "the long-polls never reached the owner"
            await asyncio.sleep(0.01)
        status, body, headers = await call("GET", "/tables/accounts/k?min_version=9&timeout_ms=30000")
        assert (status, body["error"], headers["Retry-After"]) == (503, "overloaded", "1")
        for _ in range(5):  # the plain pool is free
            assert (await call("GET", "/tables/accounts/k"))[0] == 200
        owner.release.set()
        assert [s for s, _, _ in await asyncio.gather(*polls)] == [200, 200]

    with_owner(projector, scenario)


def test_parked_requests_are_capped(projector: Any) -> None:
    """Fails on the old code: no cap on /control waits, and the row cap answered without Retry-After."""
    projector.owns.return_value = True
    projector.store.get.return_value = None
    projector.parking = ParkingLimit(1)
    assert projector.parking.enter()  # the one place is taken

    async def scenario(call: Call) -> None:
        for path in ("/tables/accounts/k?min_version=3&timeout_ms=5000", "/control?min_offset=99&timeout_ms=5000"):
            status, body, headers = await call("GET", path)
            assert (status, body["error"], headers["Retry-After"]) == (503, "overloaded", "1"), path
        projector.parking.leave()
        status, body, _ = await call("GET", "/control?min_offset=99&timeout_ms=50")
        assert (status, body["error"]) == (504, "timeout")
        assert projector.parking.parked == 0, "a wait gives its place back"

    serve(projector, scenario)


def test_a_listing_stops_at_its_deadline(projector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails on the old code: a scan that hangs held the listing past the deadline, and the 503 had no Retry-After."""
    monkeypatch.setattr("projector.web.tables.ROUTE_DEADLINE", 0.5)

    async def scenario(call: Call, owner: FakeOwner, url: str) -> None:
        owner.hang_scans = True  # the other worker holds the scan, longer than the deadline
        status, body, headers = await asyncio.wait_for(call("GET", "/tables/accounts?limit=5"), 5)
        assert (status, body["error"], headers["Retry-After"]) == (503, "unavailable", "1")
        owner.release.set()

    with_owner(projector, scenario)
