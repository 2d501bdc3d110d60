"""``projector verify``: equal copies pass (with ``--rebuild`` too); one changed row in one copy is found.

Two workers with a standby copy of every partition fold some demo accounts;
verify (and ``--rebuild``, a scratch copy folded from the events topic) exits
0. Then one row of a standby copy is changed in its RocksDB database while its
worker is stopped (the stored changelog offset kept, so the restart keeps it),
and verify exits 1, naming that partition and that worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import rocksdict
from support import get, produce, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

PARTITIONS = 2
REPO = Path(__file__).resolve().parents[2]


def _verify(worker, names, kafka_bootstrap, *args: str, table: str = "accounts") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    env.update(PROJECTOR_BROKER=f"kafka://{kafka_bootstrap}", PROJECTOR_APP_ID=names["app_id"],
               PROJECTOR_EVENTS_TOPIC=names["events"], PROJECTOR_CONTROL_TOPIC=names["control"])
    return subprocess.run([sys.executable, "-m", "projector", "verify", table, "--url", worker.url,
                           "--timeout", "20", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def _copies(workers) -> dict[int, list[tuple[str, str, int]]]:
    """(worker URL, role, rows) of every copy of each accounts partition."""
    out: dict[int, list[tuple[str, str, int]]] = {}
    for w in workers:
        status, body = get(f"{w.url}/tables/accounts/digest")
        assert status == 200, body
        assert body["table"] == "accounts"
        for p in body["partitions"]:
            assert set(p) >= {"partition", "offset", "rows", "digest"}
            out.setdefault(p["partition"], []).append((w.url, p["role"], p["rows"]))
    return out


def test_verify_passes_on_equal_copies_and_names_a_changed_standby_copy(worker_factory, names, kafka_bootstrap):
    env = {"PROJECTOR_STANDBY_REPLICAS": "1"}
    w1 = worker_factory("w1", partitions=PARTITIONS, extra_env=env)
    w2 = worker_factory("w2", partitions=PARTITIONS, extra_env=env)
    w1.wait_ready()
    w2.wait_ready()
    envelopes = list(generate_histories(30, 150, seed=19))
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in envelopes])
    accounts = len({e["aggregate_id"] for e in envelopes})

    def every_copy_holds_every_row() -> bool:
        copies = _copies([w1, w2])
        return (sorted(copies) == list(range(PARTITIONS))
                and all(sorted(role for _, role, _ in c) == ["active", "standby"] for c in copies.values())
                and all(len({r for *_, r in c}) == 1 for c in copies.values())
                and sum(c[0][2] for c in copies.values()) == accounts)

    try:
        wait_for(every_copy_holds_every_row, 60, "an active and a standby copy of each partition, every account folded")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {accounts} accounts, copies {_copies([w1, w2])}") from None
    done = _verify(w1, names, kafka_bootstrap, "--rebuild")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert sum("equal at offset" in line for line in lines) == PARTITIONS, done.stdout
    assert sum("rebuild equal" in line for line in lines) == PARTITIONS, done.stdout
    # A re-keyed table too: its scratch copy goes through the repartition step.
    done = _verify(w1, names, kafka_bootstrap, "--rebuild", table="owners")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sum("rebuild equal" in line for line in done.stdout.splitlines()) == PARTITIONS, done.stdout

    # Change one row of one of w2's standby copies, offsets untouched.
    partition = next(p for p, c in sorted(_copies([w2]).items()) if c[0][1] == "standby" and c[0][2] > 0)
    w2.stop()
    (db_path,) = w2.data_dir.glob(f"v*/tables/accounts-{partition}.db")
    db = rocksdict.Rdict(str(db_path), options=rocksdict.Options(raw_mode=True))
    try:
        key, value = next((k, v) for k, v in db.items() if not k.startswith(b"__faust"))
        db[key] = value.replace(b'"balance":', b'"balance":1', 1) if b'"balance":' in value else value + b" "
        assert db[key] != value
    finally:
        db.close()
    w2.start()
    w2.wait_ready()
    wait_for(lambda: len(_copies([w1, w2]).get(partition, [])) == 2, 60, f"both copies of partition {partition}")

    done = _verify(w1, names, kafka_bootstrap)
    assert done.returncode == 1, done.stdout + done.stderr
    different = [line for line in done.stdout.splitlines() if "DIFFERENT" in line and "partition" in line]
    assert len(different) == 1, done.stdout
    assert different[0].startswith(f"partition {partition}: DIFFERENT") and w2.url in different[0], done.stdout
