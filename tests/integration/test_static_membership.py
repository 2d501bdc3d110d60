"""Static group membership (PROJECTOR_INSTANCE_ID): fast restarts, and two workers with one instance id.

A worker killed with ``kill -9`` (or stopped with SIGTERM and
PROJECTOR_LEAVE_ON_STOP=false) and restarted on its data dir within the
session timeout takes its partitions back without a rebalance: the other
worker's generation and assignments do not change, and it serves its own
keys all along. A second worker started with an instance id already in use
fences the first, which stops with an error naming PROJECTOR_INSTANCE_ID.
"""

from __future__ import annotations

import orjson
import pytest
from support import fold_accounts, get, produce, wait_for

from projector.core.partitioning import partition_for
from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _status(worker) -> dict:
    status, body = get(f"{worker.url}/status")
    assert status == 200, body
    return body


def _versions(worker, keys) -> dict:
    out = {}
    for key in keys:
        status, body = get(f"{worker.url}/tables/accounts/{key}", timeout=10)
        out[key] = body.get("version") if status == 200 else (status, body)
    return out


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM with PROJECTOR_LEAVE_ON_STOP=false"])
def test_a_worker_restarted_after_kill_9_takes_its_partitions_back_without_a_rebalance(
        worker_factory, names, kafka_bootstrap, stop):
    histories = list(generate_histories(120, 2400, seed=21))
    last = {k: r["version"] for k, r in fold_accounts(histories).items()}
    staying = {"PROJECTOR_LEAVE_ON_STOP": "false"} if stop.startswith("SIGTERM") else {}
    w1 = worker_factory("s1", partitions=PARTITIONS, extra_env=staying)
    w2 = worker_factory("s2", partitions=PARTITIONS)
    for w in (w1, w2):
        w.wait_ready()
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in histories])
    wait_for(lambda: _versions(w1, last) == last, 120, "the fold, read through s1", interval=1.0)

    def settled() -> tuple[dict, dict]:
        s1, s2 = _status(w1), _status(w2)
        both = sorted(s1["partitions"] + s2["partitions"])
        return (s1, s2) if s1["ready"] and s2["ready"] and both == list(range(PARTITIONS)) else None

    before1, before2 = wait_for(settled, 60, "both workers ready with every partition assigned once")
    assert before1["group"]["instance_id"] == f"{_hostname()}-{w1.port}"
    assert before1["partitions"] and before2["partitions"]
    keys1 = {k: v for k, v in last.items() if partition_for(k.encode(), PARTITIONS) in before1["partitions"]}
    keys2 = {k: v for k, v in last.items() if partition_for(k.encode(), PARTITIONS) in before2["partitions"]}
    assert keys1 and keys2

    if staying:
        w1.stop()  # a clean stop that keeps its place in the group
        assert w1.proc.returncode == 0, w1.log_tail()
    else:
        w1.kill9()
    # The other worker serves its own keys while s1 is down, and then while it starts again.
    assert _versions(w2, keys2) == keys2
    w1.start()
    served = []

    def w1_ready() -> bool:
        served.append(_versions(w2, keys2) == keys2)
        return _ready(w1)

    wait_for(w1_ready, 120, "s1 to be ready again")
    assert served and all(served), served

    after1, after2 = _status(w1), _status(w2)
    # No rebalance: s2 got no new assignment, the group's generation is the same, and s1 has its partitions back.
    assert after2["group"] == before2["group"], (before2["group"], after2["group"])
    assert after2["partitions"] == before2["partitions"]
    assert after1["partitions"] == before1["partitions"]
    assert after1["group"]["generation"] == before1["group"]["generation"]
    assert after1["group"]["assignments"] == 1
    # The restarted worker serves its keys from the state it kept.
    assert _versions(w1, keys1) == keys1
    assert _versions(w2, keys2) == keys2


def test_a_second_worker_with_the_same_instance_id_stops_the_first_with_the_fix(worker_factory, names):
    dup = {"PROJECTOR_INSTANCE_ID": f"{names['app_id']}-same"}
    w1 = worker_factory("d1", partitions=PARTITIONS, extra_env=dup)
    w1.wait_ready()
    assert _status(w1)["group"]["instance_id"] == dup["PROJECTOR_INSTANCE_ID"]
    w2 = worker_factory("d2", partitions=PARTITIONS, extra_env=dup)
    # The broker fences the older member: it stops (not loops, not hangs), saying what to change.
    assert w1.proc.wait(timeout=120) != 0
    log = w1.log_path.read_text(errors="replace")
    assert f"PROJECTOR_INSTANCE_ID={dup['PROJECTOR_INSTANCE_ID']!r}" in log and "FENCED_INSTANCE_ID" in log, \
        w1.log_tail(60)
    assert "give each its own PROJECTOR_INSTANCE_ID" in log
    # The newer one keeps the instance id, and every partition.
    w2.wait_ready()
    wait_for(lambda: _status(w2)["partitions"] == list(range(PARTITIONS)), 60, "d2 to own every partition")
    assert w2.alive(), w2.log_tail()
    assert "FENCED_INSTANCE_ID" not in w2.log_path.read_text(errors="replace")


def test_instance_id_none_turns_static_membership_off(worker_factory):
    w = worker_factory("n1", partitions=PARTITIONS, extra_env={"PROJECTOR_INSTANCE_ID": "none"})
    w.wait_ready()
    assert _status(w)["group"]["instance_id"] is None


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _ready(worker) -> bool:
    if not worker.alive():
        return False
    try:
        return get(f"{worker.url}/readyz", timeout=5)[0] == 200
    except OSError:
        return False
