"""Two workers with tokens: what passes between them is theirs, and one client cannot starve them.

- A command taken by one worker and decided by the other comes back with its
  answer (the writer calls ``/internal/command-answers`` with the peer token);
  the same call from outside, with the API or the admin token, is refused.
- A flood of long-polls sent to the worker that does not own their key (more
  than it forwards at once) gets 503 ``overloaded`` beyond the cap, and key
  lookups through that worker still answer 200 while the rest is parked.
"""

from __future__ import annotations

import threading
import urllib.request

import orjson
import pytest
from support import http, produce, wait_for

from projector.core.partitioning import partition_for

pytestmark = pytest.mark.integration

API, ADMIN = "peer-test-api", "peer-test-admin"
WAITS = 8  # PROJECTOR_MAX_FORWARDED_WAITS of each worker
FLOOD = 110  # more than the forwarded-wait cap, and more than the 100 connections of the plain pool


def lookup(url: str, timeout: float = 20) -> tuple[int, dict, str | None]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {API}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, orjson.loads(r.read()), r.headers.get("X-Projector-Served-By")
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read()), e.headers.get("X-Projector-Served-By")


def metric(url: str, name: str) -> float:
    req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {API}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        text = r.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def opened(aid: str) -> tuple[bytes, bytes]:
    return aid.encode(), orjson.dumps({"id": f"{aid}-1", "aggregate_id": aid, "aggregate_type": "account",
                                       "type": "AccountOpened", "version": 1,
                                       "data": {"owner": "o-1", "currency": "EUR"}})


def test_peer_calls_need_the_peer_token_and_long_polls_do_not_starve_lookups(worker_factory, names,
                                                                              kafka_bootstrap):
    env = {"PROJECTOR_API_TOKEN": API, "PROJECTOR_ADMIN_TOKEN": ADMIN,
           "PROJECTOR_MAX_FORWARDED_WAITS": str(WAITS)}
    w1 = worker_factory("w1", partitions=4, extra_env=env)
    w2 = worker_factory("w2", partitions=4, extra_env=env)
    w1.wait_ready()
    w2.wait_ready()

    def partitions(worker) -> list[int]:
        status, body = http("GET", f"{worker.url}/status", token=API)
        return body["partitions"] if status == 200 else []

    wait_for(lambda: partitions(w1) and partitions(w2) and len(partitions(w1) + partitions(w2)) == 4, 120,
             "both workers to own partitions")
    w1.wait_ready()
    w2.wait_ready()
    on_w2 = set(partitions(w2))

    # Commands through w1, some decided by w2: their answers come back over /internal/command-answers.
    ids = [f"cmd-{i}" for i in range(40)]
    remote = [aid for aid in ids if partition_for(aid.encode(), 4) in on_w2][:4]
    assert remote
    for aid in remote:
        status, body = http("POST", f"{w1.url}/commands",
                            {"aggregate_type": "account", "aggregate_id": aid, "type": "OpenAccount",
                             "data": {"owner": "o-1", "currency": "EUR"}}, token=API, timeout=30)
        assert (status, body.get("version")) == (200, 1), body
    assert metric(w2.url, "projector_commands_total") >= len(remote), "w2 decided them: the answers crossed over"
    assert metric(w2.url, "projector_command_answers_dropped_total") == 0

    # A forged answer from outside: the API token (or the admin token) does not open internal routes.
    forged = [{"aggregate_id": remote[0], "command_id": "someone-elses", "status": 200, "body": {"version": 1}}]
    for token in (API, ADMIN, None):
        status, body = http("POST", f"{w1.url}/internal/command-answers", forged, token=token)
        assert (status, body["error"]) == (401, "unauthorized"), (token, body)

    # Rows on both workers; the flood waits on one that w2 owns, asked through w1.
    aids = [f"flood-{i}" for i in range(24)]
    produce(kafka_bootstrap, names["events"], [opened(aid) for aid in aids])
    wait_for(lambda: all(lookup(f"{w1.url}/tables/accounts/{aid}")[0] == 200 for aid in aids), 60,
             "every row through w1")
    remote_rows = [aid for aid in aids if partition_for(aid.encode(), 4) in on_w2]
    local_rows = [aid for aid in aids if aid not in remote_rows]
    assert remote_rows and local_rows
    target = remote_rows[0]

    results: list[tuple[int, dict, str | None]] = []
    lock = threading.Lock()

    def long_poll() -> None:
        r = lookup(f"{w1.url}/tables/accounts/{target}?min_version=2&timeout_ms=30000", timeout=60)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=long_poll, daemon=True) for _ in range(FLOOD)]
    for t in threads:
        t.start()
    try:
        # The flood is parked: w2 holds the forwarded waits, w1 refused the rest.
        wait_for(lambda: metric(w2.url, "projector_parked_requests") >= WAITS, 30, "the forwarded long-polls to park")
        wait_for(lambda: len(results) >= FLOOD - WAITS, 30, "the long-polls beyond the cap to be answered")
        with lock:
            refused = list(results)
        assert all(s == 503 and b["error"] == "overloaded" for s, b, _ in refused), refused[:3]
        # Key lookups through w1 still answer, forwarded ones included, while the flood is parked.
        for aid in remote_rows + local_rows:
            status, body, served_by = lookup(f"{w1.url}/tables/accounts/{aid}", timeout=10)
            assert (status, body["version"]) == (200, 1), body
            if aid in remote_rows:
                assert served_by == f"http://127.0.0.1:{w2.port}"
        assert metric(w2.url, "projector_parked_requests") >= WAITS, "still parked"
    finally:
        # Version 2 of the row wakes every parked long-poll.
        produce(kafka_bootstrap, names["events"], [(target.encode(), orjson.dumps(
            {"id": f"{target}-2", "aggregate_id": target, "aggregate_type": "account", "type": "MoneyDeposited",
             "version": 2, "data": {"amount": 5}}))])
        for t in threads:
            t.join(timeout=60)
    woken = [(s, b) for s, b, _ in results if s == 200]
    assert len(woken) == WAITS and all(b["version"] == 2 for _, b in woken), results[-WAITS:]
