"""``GET /tables/{table}/digest`` over HTTP: this worker's copies, 404 for an unknown table, 503 while it cannot read."""

from __future__ import annotations

from test_web_http import catalog, projector, serve  # noqa: F401 - the fixtures and the app the web tests share

from projector.web import digest as digest_view


def test_the_digest_of_each_copy_this_worker_holds(projector, monkeypatch):  # noqa: F811
    entries = [{"partition": 0, "offset": 12, "rows": 3, "digest": "00000000000000ff", "role": "active"},
               {"partition": 3, "offset": 0, "rows": 0, "digest": "0" * 16, "role": "standby"}]
    asked = []

    async def table_digests(app, events_topic, table):
        asked.append(table)
        return entries

    monkeypatch.setattr(digest_view, "table_digests", table_digests)
    projector.store.tables = {"accounts": "the accounts table"}

    async def scenario(call):
        status, body, _ = await call("GET", "/tables/accounts/digest")
        assert (status, body) == (200, {"table": "accounts", "partitions": entries})
        assert asked == ["the accounts table"]  # never forwarded: this worker's own table
        status, body, _ = await call("GET", "/tables/nope/digest")
        assert (status, body["error"]) == (404, "unknown_table")

    serve(projector, scenario)


def test_a_copy_that_cannot_be_read_now_is_a_503(projector, monkeypatch):  # noqa: F811
    async def table_digests(app, events_topic, table):
        raise RuntimeError("database closed")

    monkeypatch.setattr(digest_view, "table_digests", table_digests)
    projector.store.tables = {"accounts": object()}

    async def scenario(call):
        status, body, headers = await call("GET", "/tables/accounts/digest")
        assert (status, body["error"]) == (503, "unavailable") and headers["Retry-After"] == "1"

    serve(projector, scenario)
