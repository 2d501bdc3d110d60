"""Read-model builds on a real worker: a brand-new read model with a manual cutover, and a build without history.

One app, one worker, restarted between phases (CONTRACT §6):

1. Its events topic is created here with a retention: the worker warns about it
   (log and ``/status`` "warnings") and folds demo events into accounts.
2. A new module, ``deposits``, is added and the worker restarted with
   ``PROJECTOR_CUTOVER=manual``: ``GET /tables`` lists it with no version and a
   build, a row read answers 503 ``building``, a cutover on a table with no build
   is 409 ``not_building``; once every partition has caught up (the rows still
   answer 503: the switch waits), ``POST /tables/deposits/cutover`` is 202, and the
   rows then equal an oracle folded here, at version 1 with no build.
3. The events topic's first records are deleted (``delete_records``) and accounts'
   ``VERSION`` raised: the build does not start, ``/status`` and the log say why,
   and accounts keeps answering from version 1.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
from support import REPO, fold_accounts, get, http, produce, prometheus, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

PARTITIONS = 2

DEPOSITS = '''
NAME = "deposits"
DESCRIPTION = "Deposits per account: how many, and their total"
HANDLES = ("MoneyDeposited",)


def fold(state, event):
    state = state or {"count": 0, "total": 0}
    return {"count": state["count"] + 1, "total": state["total"] + event.data["amount"]}
'''


def fold_deposits(events: list[dict]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for e in events:
        if e["type"] == "MoneyDeposited":
            value = rows.get(e["aggregate_id"], {"value": {"count": 0, "total": 0}})["value"]
            rows[e["aggregate_id"]] = {"version": e["version"], "value": {
                "count": value["count"] + 1, "total": value["total"] + e["data"]["amount"]}}
    return rows


def listing(url: str, table: str) -> dict[str, dict]:
    rows, cursor = {}, None
    while True:
        status, body = get(f"{url}/tables/{table}?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, (status, body)
        rows.update({r["key"]: {"version": r["version"], "value": r["value"]} for r in body["rows"]})
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def tables(url: str) -> dict[str, dict]:
    status, body = get(f"{url}/tables")
    assert status == 200, body
    return {t["name"]: t for t in body["tables"]}


async def _admin(bootstrap: str, action):
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await action(admin)
    finally:
        await admin.close()


def create_events_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import NewTopic

    asyncio.run(_admin(bootstrap, lambda a: a.create_topics(
        [NewTopic(topic, PARTITIONS, 1, topic_configs={"retention.ms": "3600000"})])))


def delete_first_records(bootstrap: str, topic: str, partition: int, before: int) -> dict:
    from aiokafka import TopicPartition
    from aiokafka.admin import RecordsToDelete

    return asyncio.run(_admin(bootstrap, lambda a: a.delete_records(
        {TopicPartition(topic, partition): RecordsToDelete(before_offset=before)})))


def test_a_new_read_model_is_built_then_switched_and_a_build_without_history_does_not_start(
        worker_factory, names, kafka_bootstrap, tmp_path: Path):
    tables_dir = tmp_path / "tables"
    shutil.copytree(REPO / "tables", tables_dir)
    create_events_topic(kafka_bootstrap, names["events"])
    w = worker_factory("w1", partitions=PARTITIONS, extra_env={
        "PROJECTOR_TABLES_DIR": str(tables_dir), "PROJECTOR_STANDBY_REPLICAS": "0"})
    w.wait_ready()

    # --- 1. the retention warning; accounts folded ---------------------------------------------
    status, body = get(f"{w.url}/status")
    assert status == 200 and body["warnings"], body.get("warnings")
    assert "retention.ms=3600000" in body["warnings"][0] and names["events"] in body["warnings"][0]
    assert "deletes events (retention.ms=3600000)" in w.log_path.read_text(errors="replace")
    events = list(generate_histories(60, 1200, seed=7))
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in events])
    accounts = fold_accounts(events)
    wait_for(lambda: listing(w.url, "accounts") == accounts, 60, "accounts to hold every event", interval=0.5)
    assert tables(w.url)["accounts"]["version"] == 1 and tables(w.url)["accounts"]["building"] is None

    # --- 2. a brand-new read model, switched by hand ----------------------------------------------
    w.stop()
    (tables_dir / "deposits.py").write_text(DEPOSITS)
    w.env["PROJECTOR_CUTOVER"] = "manual"
    w.start()
    w.wait_ready()
    listed = tables(w.url)["deposits"]
    assert listed["version"] is None and listed["building"] is not None, listed
    assert listed["building"]["version"] == 1 and "remaining" in listed["building"], listed
    # No version answers until the cutover is asked for.
    aid = next(iter(fold_deposits(events)))
    status, body = get(f"{w.url}/tables/deposits/{aid}")
    assert status == 503 and body["error"] == "building", (status, body)
    assert "remaining" in body and "eta_seconds" in body, body
    assert get(f"{w.url}/tables/deposits")[0] == 503
    status, body = http("POST", f"{w.url}/tables/accounts/cutover")
    assert (status, body["error"]) == (409, "not_building"), (status, body)
    early = None
    if tables(w.url)["deposits"]["building"]["partitions_caught_up"] < PARTITIONS:
        # Not caught up yet (as a rule, right after the restart): the cutover is refused. Should the build
        # have caught up in between, the cutover is taken, and the rest holds all the same.
        early, body = http("POST", f"{w.url}/tables/deposits/cutover")
        assert early == 202 or (early, body["error"]) == (409, "not_caught_up"), (early, body)
        assert early == 202 or ("remaining" in body and "eta_seconds" in body), body

    def caught_up() -> dict:
        building = tables(w.url)["deposits"]["building"]
        return building if building and building["partitions_caught_up"] == PARTITIONS else None

    if early != 202:
        building = wait_for(caught_up, 60, "every partition of deposits to catch up", interval=0.3)
        assert building["remaining"] == 0 and building["eta_seconds"] == 0, building
        status, body = get(f"{w.url}/status")
        assert body["builds"]["deposits"]["partitions_caught_up"] == PARTITIONS, body["builds"]
        assert 'projector_build_remaining{table="deposits",version="1"}' in prometheus(w.url)
        # Caught up, but the switch waits for the cutover: still no version answers.
        assert get(f"{w.url}/tables/deposits/{aid}")[0] == 503
        assert tables(w.url)["deposits"]["version"] is None
        status, body = http("POST", f"{w.url}/tables/deposits/cutover")
        assert status == 202 and body["table"] == "deposits" and body["version"] == 1, (status, body)
    wait_for(lambda: tables(w.url)["deposits"]["version"] == 1, 30, "deposits to switch to version 1")
    assert tables(w.url)["deposits"]["building"] is None
    assert listing(w.url, "deposits") == fold_deposits(events)
    status, body = get(f"{w.url}/tables/deposits/{aid}")
    assert status == 200 and body["value"] == fold_deposits(events)[aid]["value"], body
    assert "deposits" not in get(f"{w.url}/status")[1]["builds"]

    # --- 3. history gone: a raised VERSION is not built -------------------------------------------
    delete_first_records(kafka_bootstrap, names["events"], 0, 5)
    w.stop()
    with open(tables_dir / "accounts.py", "a") as f:
        f.write("\nVERSION = 2\n")
    w.start()
    w.wait_ready()

    def problem() -> str:
        builds = get(f"{w.url}/status")[1]["builds"]
        return (builds.get("accounts") or {}).get("problem")

    why = wait_for(problem, 30, "/status to say why accounts version 2 cannot be built")
    assert "events topic" in why and "retention" in why and "offset 5" in why, why
    log = w.log_path.read_text(errors="replace")
    assert "building accounts-v2: the events topic no longer holds the history" in log
    listed = tables(w.url)["accounts"]
    assert listed["version"] == 1 and listed["building"]["version"] == 2, listed
    assert listing(w.url, "accounts") == accounts
    status, body = get(f"{w.url}/tables/accounts/{aid}")
    assert status == 200 and body["value"] == accounts[aid]["value"], body
    assert get(f"{w.url}/tables/deposits/{aid}")[0] == 200
    # The live fold goes on: a new deposit reaches accounts and deposits.
    last = max((e for e in events if e["aggregate_id"] == aid), key=lambda e: e["version"])
    more = {**last, "id": f"{aid}/more", "type": "MoneyDeposited", "version": last["version"] + 1,
            "data": {"amount": 3}}
    produce(kafka_bootstrap, names["events"], [(aid.encode(), orjson.dumps(more))])
    status, body = get(f"{w.url}/tables/deposits/{aid}?min_version={more['version']}&timeout_ms=20000", timeout=30)
    assert status == 200 and body["value"] == fold_deposits(events + [more])[aid]["value"], (status, body)
    assert listing(w.url, "accounts") == fold_accounts(events + [more])
    # Said once in the log, not at every round of the builder since.
    assert w.log_path.read_text(errors="replace").count("the events topic no longer holds") == 1
    assert w.alive()
    assert "Traceback" not in w.log_path.read_text(errors="replace"), w.log_tail(80)
