"""GET /tables/{table}/index/{index}/{value} over HTTP, without Kafka: two workers, each owning half the partitions.

The rows are folded by the real engine into an in-memory store both stand-in
workers read; worker A owns partitions 0 and 1, worker B the others, and A asks
B for its part over B's ``/internal/index/...`` with the peer token.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from enginekit import PARTITIONS, Driver, closed, opened

from projector.core.control import ControlState
from projector.core.lifecycle import TableState
from projector.core.partitioning import partition_for
from projector.runtime.config import Settings
from projector.runtime.waiters import ParkingLimit
from projector.web.middleware import web_application_options
from projector.web.routes import install_routes
from projector.web.tables import encode_cursor

API = "api-token"
OWNERS = ["ann", "bob", "cy"]
ACCOUNTS = [f"acc-{i:03d}" for i in range(30)]


def owner_of(i: int) -> str:
    return OWNERS[i % len(OWNERS)]


@pytest.fixture(scope="module")
def driver() -> Driver:
    d = Driver()
    d.run([d.record(opened(aid, owner_of(i))) for i, aid in enumerate(ACCOUNTS)])
    d.run([d.record(closed(aid, 2)) for aid in ACCOUNTS[::4]])
    return d


def fake_worker(driver: Driver, port: int, mine: set[int]) -> Any:
    fake = mock.MagicMock(name=f"worker-{port}")
    fake.catalog = driver.catalog
    fake.partitions = PARTITIONS
    fake.settings = Settings(api_token=API, web_port=port, broker="kafka://127.0.0.1:1")
    fake.control = ControlState(driver.catalog.control_settings)
    fake.model = driver.catalog.get
    fake.states = {m.name: TableState(m, m.version) for m in driver.catalog.models}
    fake.builds.summary.return_value = None
    fake.stopping = False
    fake.recovered = True
    fake.parking = ParkingLimit(fake.settings.max_parked)
    fake.store = driver.store
    fake.owns.side_effect = lambda partition: partition in mine
    return fake


Call = Callable[..., Awaitable[tuple[int, Any]]]


def two_workers(driver: Driver, scenario: Callable[[Call, Any], Awaitable[None]]) -> None:
    async def main() -> None:
        b = fake_worker(driver, 2, {2, 3})
        b_app = web.Application(**web_application_options(b))
        install_routes(b_app, b)
        async with TestServer(b_app, host="127.0.0.1") as b_server:
            b_url = str(b_server.make_url("")).rstrip("/")
            a = fake_worker(driver, 1, {0, 1})
            a.owner_url.return_value = b_url
            a_app = web.Application(**web_application_options(a))
            install_routes(a_app, a)
            async with TestClient(TestServer(a_app, host="127.0.0.1")) as client:

                async def call(path: str, token: Any = API) -> tuple[int, Any]:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    r = await client.get(path, headers=headers)
                    return r.status, orjson.loads(await r.read())

                await scenario(call, b)

    asyncio.run(main())


def expected(field: str, value: str, driver: Driver) -> list[str]:
    rows = driver.store.table("accounts")
    return sorted(k for k, r in rows.items() if r["value"][field] == value)


def test_an_index_lookup_pages_through_both_workers_in_key_order(driver: Driver) -> None:
    async def scenario(call: Call, b: Any) -> None:
        for field, value in (("owner", "ann"), ("status", "open"), ("status", "closed")):
            want = expected(field, value, driver)
            on = {partition_for(k.encode(), PARTITIONS) for k in want}
            assert on & {0, 1} and on & {2, 3}, "rows on both workers"
            status, body = await call(f"/tables/accounts/index/{field}/{value}")
            assert status == 200 and body["next_cursor"] is None
            assert [r["key"] for r in body["rows"]] == want
            assert all(r["value"][field] == value and r["version"] in (1, 2) for r in body["rows"])
            assert body["rows"][0] == {"key": want[0], **driver.row("accounts", want[0])}
            # Pages of 3, following next_cursor.
            keys, cursor = [], None
            while True:
                path = f"/tables/accounts/index/{field}/{value}?limit=3" + (f"&cursor={cursor}" if cursor else "")
                status, body = await call(path)
                assert status == 200 and len(body["rows"]) <= 3
                keys += [r["key"] for r in body["rows"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert keys == want
        # B answered for its partitions (with the peer token: the API token alone opens no internal route).
        asked = [c.args for c in b.owns.call_args_list]
        assert (2,) in asked and (3,) in asked

    two_workers(driver, scenario)


def test_an_index_value_no_row_has_is_an_empty_page(driver: Driver) -> None:
    async def scenario(call: Call, b: Any) -> None:
        assert await call("/tables/accounts/index/owner/nobody") == (200, {"rows": [], "next_cursor": None})
        # Not indexable (a NUL): no row is ever found under it.
        assert await call("/tables/accounts/index/owner/a%00b") == (200, {"rows": [], "next_cursor": None})

    two_workers(driver, scenario)


def test_unknown_tables_indexes_and_bad_parameters(driver: Driver) -> None:
    async def scenario(call: Call, b: Any) -> None:
        status, body = await call("/tables/nope/index/owner/ann")
        assert (status, body) == (404, {"error": "unknown_table", "table": "nope"})
        status, body = await call("/tables/accounts/index/colour/red")
        assert (status, body["error"], body["index"], body["indexes"]) == (404, "unknown_index", "colour",
                                                                          ["owner", "status"])
        status, body = await call("/tables/owners/index/owner/ann")
        assert (status, body["error"]) == (404, "unknown_index")
        for query in ("limit=0", "limit=x", "limit=-1", "cursor=nonsense",
                      # A cursor of the listing, of another index, of another value: not this lookup's.
                      f"cursor={encode_cursor('accounts', 'acc-001')}",
                      f"cursor={encode_cursor('accounts', 'acc-001', 'status', 'ann')}",
                      f"cursor={encode_cursor('accounts', 'acc-001', 'owner', 'bob')}"):
            status, body = await call(f"/tables/accounts/index/owner/ann?{query}")
            assert (status, body["error"]) == (400, "invalid"), query
        status, body = await call(f"/tables/accounts/index/owner/ann?limit=5000&cursor="
                                  f"{encode_cursor('accounts', 'acc-001', 'owner', 'ann')}")
        assert status == 200 and [r["key"] for r in body["rows"]] == [k for k in expected("owner", "ann", driver)
                                                                       if k > "acc-001"]
        assert (await call("/tables/accounts/index/owner/ann", token=None))[0] == 401
        status, body = await call("/internal/index/accounts/owner?partitions=0&value=ann")
        assert (status, body["error"]) == (401, "unauthorized")

    two_workers(driver, scenario)


def test_get_tables_lists_each_tables_indexes(driver: Driver) -> None:
    async def scenario(call: Call, b: Any) -> None:
        status, body = await call("/tables")
        assert status == 200
        assert {t["name"]: t["indexes"] for t in body["tables"]} == {
            "accounts": ["owner", "status"], "owners": [], "currencies": []}

    two_workers(driver, scenario)


def test_an_entry_whose_row_moved_on_is_passed_over(driver: Driver) -> None:
    """Entries and rows are written one after the other: a reader in between sees only rows that match."""
    stale = ACCOUNTS[1]  # owner bob, open
    p = partition_for(stale.encode(), PARTITIONS)
    driver.store.put("_accounts_idx", p, b"owner\0ann\0" + stale.encode(), b"1")
    try:
        async def scenario(call: Call, b: Any) -> None:
            status, body = await call("/tables/accounts/index/owner/ann")
            assert status == 200 and stale not in [r["key"] for r in body["rows"]]
            assert [r["key"] for r in body["rows"]] == expected("owner", "ann", driver)

        two_workers(driver, scenario)
    finally:
        driver.store.put("_accounts_idx", p, b"owner\0ann\0" + stale.encode(), None)
