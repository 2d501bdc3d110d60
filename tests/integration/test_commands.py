"""The command side on real Kafka: single writer per partition, expected versions, idempotent command ids.

50 client tasks send mixed account commands through random workers; about
half carry the version they read just before as ``expected_version``. The
aggregate index, the events topic and the read models are then checked
against what the clients were told.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import orjson
from support import fold_accounts, get, http, read_topic, wait_for

ACCOUNTS = [f"acct-{i:02d}" for i in range(20)]
MAX_WITHDRAWAL = 150


def _command(rng: random.Random, aid: str, n: int) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.04:
        kind, data = "OpenAccount", {"owner": f"owner-{aid}", "currency": "EUR"}
    elif roll < 0.06:
        kind, data = "CloseAccount", {}
    elif roll < 0.5:
        kind, data = "Deposit", {"amount": rng.randint(1, 120)}
    else:
        kind, data = "Withdraw", {"amount": rng.randint(1, 200)}
    return {"command_id": f"cmd-{n}", "aggregate_type": "account", "aggregate_id": aid, "type": kind, "data": data}


async def _send(session: aiohttp.ClientSession, urls: list[str], rng: random.Random, command: dict,
                deadline: float) -> tuple[int, dict]:
    """POST a command to a random live worker; on a dead worker, a 503 or a 504, send it again (same id)."""
    while True:
        url = rng.choice(urls)
        try:
            async with session.post(f"{url}/commands?timeout_ms=8000", data=orjson.dumps(command)) as r:
                body = orjson.loads(await r.read())
                if r.status not in (503, 504):
                    return r.status, body
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"command {command['command_id']} got no final answer in time")
        await asyncio.sleep(0.2)


async def _load(urls: list[str], total: int, clients: int, seed: int, deadline: float,
                more: Any = None) -> list[dict[str, Any]]:
    """``total`` commands from ``clients`` tasks (and on while ``more()``); returns what each sent and got."""
    results: list[dict[str, Any]] = []
    counter = itertools.count()
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            for n in counter:
                if n >= total and not (more and more()):
                    return
                aid = rng.choice(ACCOUNTS)
                command = _command(rng, aid, n)
                if rng.random() < 0.5:
                    # The version read just before: a conflict when another command gets in first.
                    try:
                        async with session.get(f"{rng.choice(urls)}/tables/accounts/{aid}") as r:
                            row = orjson.loads(await r.read())
                        command["expected_version"] = row["version"] if r.status == 200 else 0
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass
                status, body = await _send(session, urls, rng, command, deadline)
                results.append({"command": command, "status": status, "body": body})

        await asyncio.gather(*(client(i) for i in range(clients)))
    return results


def _stream(url: str, aid: str) -> list[dict]:
    events: list[dict] = []
    version = 1
    while True:
        status, body = get(f"{url}/aggregates/{aid}/events?from_version={version}&limit=1000")
        if status == 404:
            return events
        assert status == 200, body
        events.extend(body["events"])
        if body["next_version"] is None:
            return events
        version = body["next_version"]


def _check(results: list[dict], urls: list[str], bootstrap: str, events_topic: str) -> dict[str, Any]:
    statuses = Counter(r["status"] for r in results)
    assert set(statuses) <= {200, 409, 422, 400}, statuses
    assert statuses[400] == 0, [r for r in results if r["status"] == 400][:3]
    accepted = {r["command"]["command_id"]: r for r in results if r["status"] == 200}
    assert accepted, "no command was accepted"

    # The aggregate index: every stream contiguous from 1, each version once.
    streams = {aid: _stream(urls[0], aid) for aid in ACCOUNTS}
    by_command: dict[str, list[dict]] = defaultdict(list)
    for aid, events in streams.items():
        assert [e["version"] for e in events] == list(range(1, len(events) + 1)), aid
        for e in events:
            by_command[e["metadata"]["command_id"]].append(e)
    # Accepted commands and appended decisions are the same set, each decision appended once.
    assert set(by_command) == set(accepted)
    for command_id, r in accepted.items():
        assert by_command[command_id] == r["body"]["events"], command_id
        assert r["body"]["version"] == r["body"]["events"][-1]["version"]

    # Balances: never below zero along any stream, and the read model on every worker matches.
    for aid, events in streams.items():
        running = 0
        for e in events:
            if e["type"] == "MoneyDeposited":
                running += e["data"]["amount"]
            elif e["type"] == "MoneyWithdrawn":
                running -= e["data"]["amount"]
                assert e["data"]["amount"] <= MAX_WITHDRAWAL
            assert running >= 0, (aid, e)
    oracle = fold_accounts([e for events in streams.values() for e in events])
    for url in urls:
        for aid, row in oracle.items():
            status, body = get(f"{url}/tables/accounts/{aid}?min_version={row['version']}&timeout_ms=20000")
            assert status == 200 and body["value"] == row["value"] and body["version"] == row["version"], (url, aid)

    # Every 409 was a real conflict: the versions it expected were taken by other commands.
    conflicts = [r for r in results if r["status"] == 409]
    for r in conflicts:
        body, aid = r["body"], r["command"]["aggregate_id"]
        assert body["error"] == "version_conflict"
        assert body["expected_version"] == r["command"]["expected_version"]
        assert body["actual_version"] > body["expected_version"], body
        taken = streams[aid][body["expected_version"]: body["actual_version"]]
        assert taken and all(e["metadata"]["command_id"] != r["command"]["command_id"] for e in taken)

    # The events topic: whatever was appended more than once is the same event each time.
    seen: dict[tuple[str, int], str] = {}
    for record in read_topic(bootstrap, events_topic):
        value = orjson.loads(record.value)
        for e in value if isinstance(value, list) else [value]:
            assert seen.setdefault((e["aggregate_id"], e["version"]), e["id"]) == e["id"], e
    assert len(seen) == sum(len(s) for s in streams.values())
    return {"statuses": statuses, "conflicts": len(conflicts), "events": len(seen)}


def _retry_gives_first_answers(results: list[dict], url: str, sample: int = 300) -> None:
    rng = random.Random(5)
    for r in rng.sample(results, min(sample, len(results))):
        status, body = http("POST", f"{url}/commands", body=r["command"])
        assert (status, body) == (r["status"], r["body"]), r["command"]["command_id"]


def _start(worker_factory, n: int) -> list:
    workers = [worker_factory(partitions=8) for _ in range(n)]
    for w in workers:
        w.wait_ready()
    wait_for(lambda: all(get(f"{w.url}/readyz")[0] == 200 for w in workers), 60, "both workers ready")
    status, _ = http("PUT", f"{workers[0].url}/control/accounts.max_withdrawal", body=MAX_WITHDRAWAL)
    assert status == 202
    for w in workers:
        wait_for(lambda w=w: get(f"{w.url}/control")[1]["entries"].get("accounts.max_withdrawal") == MAX_WITHDRAWAL,
                 30, "the withdrawal limit on every worker")
    return workers


def _open_all(urls: list[str]) -> None:
    for aid in ACCOUNTS:
        status, body = http("POST", f"{urls[0]}/commands", body={
            "command_id": f"open-{aid}", "aggregate_type": "account", "aggregate_id": aid, "type": "OpenAccount",
            "data": {"owner": f"owner-{aid}", "currency": "EUR", "initial_deposit": 500}})
        assert status == 200 and [e["type"] for e in body["events"]] == ["AccountOpened", "MoneyDeposited"], body


def test_concurrent_commands_through_two_workers(worker_factory, names, kafka_bootstrap):
    workers = _start(worker_factory, 2)
    urls = [w.url for w in workers]
    _open_all(urls)
    results = _load(urls, total=5000, clients=50, seed=1, deadline=time.monotonic() + 600)
    results = asyncio.run(results)
    for r in results:
        r["command"].setdefault("expected_version", None)
    # The opening commands count too: they are accepted decisions in the index.
    results += [{"command": {"command_id": f"open-{aid}", "aggregate_id": aid}, "status": 200,
                 "body": http("POST", f"{urls[1]}/commands", body={
                     "command_id": f"open-{aid}", "aggregate_type": "account", "aggregate_id": aid,
                     "type": "OpenAccount", "data": {"owner": f"owner-{aid}", "currency": "EUR"}})[1]}
                for aid in ACCOUNTS]
    summary = _check(results, urls, kafka_bootstrap, names["events"])
    assert summary["conflicts"] > 0, "the load had no version conflicts: it did not test first-writer-wins"
    reasons = Counter(r["body"].get("reason") for r in results if r["status"] == 422)
    assert reasons["insufficient_funds"] and reasons["over_limit"] and reasons["already_exists"], reasons
    _retry_gives_first_answers([r for r in results if "type" in r["command"]], urls[1])


def test_commands_survive_the_writer_killed_twice(worker_factory, names, kafka_bootstrap):
    workers = _start(worker_factory, 2)
    urls = [w.url for w in workers]
    _open_all(urls)
    victim = workers[1]
    stop = threading.Event()
    kills: list[float] = []

    def killer() -> None:
        for _ in range(2):
            if stop.wait(4):
                return
            victim.kill9()
            kills.append(time.monotonic())
            if stop.wait(3):
                return
            victim.start()
            victim.wait_ready(timeout=180)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        # At least 3,000 commands, and on until both kills are over.
        results = asyncio.run(_load(urls, total=3000, clients=50, seed=2, deadline=time.monotonic() + 900,
                                    more=thread.is_alive))
    finally:
        stop.set()
        thread.join(timeout=240)
    assert len(kills) == 2, "the writer was not killed twice while the load ran"
    if not victim.alive():
        victim.start()
    victim.wait_ready(timeout=180)
    for r in results:
        r["command"].setdefault("expected_version", None)
    results += [{"command": {"command_id": f"open-{aid}", "aggregate_id": aid}, "status": 200,
                 "body": http("POST", f"{urls[0]}/commands", body={
                     "command_id": f"open-{aid}", "aggregate_type": "account", "aggregate_id": aid,
                     "type": "OpenAccount", "data": {"owner": f"owner-{aid}", "currency": "EUR"}})[1]}
                for aid in ACCOUNTS]
    _check(results, urls, kafka_bootstrap, names["events"])
    _retry_gives_first_answers([r for r in results if "type" in r["command"]], urls[1])


def test_commands_disabled_answers_503_and_appends_nothing(worker_factory, names, kafka_bootstrap):
    workers = _start(worker_factory, 1)
    url = workers[0].url
    assert http("PUT", f"{url}/control/commands.enabled", body=False)[0] == 202
    wait_for(lambda: get(f"{url}/control")[1]["entries"].get("commands.enabled") is False, 30, "the switch")
    status, body = http("POST", f"{url}/commands", body={
        "command_id": "off-1", "aggregate_type": "account", "aggregate_id": "acct-off", "type": "OpenAccount",
        "data": {"owner": "x", "currency": "EUR"}})
    assert (status, body["error"]) == (503, "commands_disabled")
    assert get(f"{url}/aggregates/acct-off/events")[0] == 404
    assert http("PUT", f"{url}/control/commands.enabled", body=True)[0] == 202
    wait_for(lambda: get(f"{url}/control")[1]["entries"].get("commands.enabled") is True, 30, "the switch back")
    # Not recorded as the command's answer: the same id goes through once commands are back.
    status, body = http("POST", f"{url}/commands", body={
        "command_id": "off-1", "aggregate_type": "account", "aggregate_id": "acct-off", "type": "OpenAccount",
        "data": {"owner": "x", "currency": "EUR"}})
    assert status == 200 and body["version"] == 1
    # A bad command is a 400 with a detail, and appends nothing.
    status, body = http("POST", f"{url}/commands", body={
        "aggregate_type": "account", "aggregate_id": "acct-off", "type": "Deposit", "data": {"amount": -5}})
    assert status == 400 and body["error"] == "invalid" and "amount" in body["detail"]
    assert len(_stream(url, "acct-off")) == 1
