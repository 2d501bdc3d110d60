"""Standby copies hold every changelog record, through rebalances under load.

Each worker keeps standby copies of the partitions another worker folds
(``PROJECTOR_STANDBY_REPLICAS=1``), read from their changelogs. Faust's
recovery used to drop the changelog records queued at the very end of a
rebalance, after the consumer had moved past them: the standby copy lacked
them for good, and once promoted it folded on stale rows. Here two workers
fold while a third comes and goes, each change landing while they fold a
backlog; every cycle opens fresh accounts, so each of their rows, index
entries and group members is written once and a dropped record is never
hidden by a later one. In the end every local table
partition of both workers, active or standby, must hold exactly what its
changelog says up to the offset it claims to have applied.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import orjson
import pytest
import rocksdict
from support import get, produce, read_topic, wait_for

from projector.demo.data import generate_histories

pytestmark = pytest.mark.integration

PARTITIONS = 8
CYCLES = 4
#: One event per account: every row, index entry and group member of a cycle is written once.
ACCOUNTS_PER_CYCLE = 20_000
OFFSET_KEY = b"__faust\x00offset__"


def _cycle_records(cycle: int) -> list[tuple[bytes, bytes]]:
    out = []
    for e in generate_histories(ACCOUNTS_PER_CYCLE, ACCOUNTS_PER_CYCLE, seed=cycle):
        e["aggregate_id"] = f"c{cycle}-{e['aggregate_id']}"
        e["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cycle-{cycle}/{e['id']}"))
        out.append((e["aggregate_id"].encode(), orjson.dumps(e)))
    return out


def _local_partitions(data_dir: Path) -> dict[tuple[str, int], dict[bytes, bytes]]:
    """Every table partition in a stopped worker's data dir: (table, partition) -> rows, the offset key included."""
    out = {}
    for db_path in sorted(data_dir.glob("v*/tables/*-*.db")):
        table, _, partition = db_path.name[: -len(".db")].rpartition("-")
        if not partition.isdigit() or table == "control":
            continue
        db = rocksdict.Rdict(str(db_path), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            out[(table, int(partition))] = dict(db.items())
        finally:
            db.close()
    return out


def _stale_keys(rows: dict[bytes, bytes], changelog: list[Any]) -> list[str]:
    """Keys whose local value is not the changelog's last value at or below the offset the copy claims."""
    applied = rows.get(OFFSET_KEY)
    if applied is None:
        return []  # nothing applied yet: nothing to hold
    upto = int(applied)
    expected: dict[bytes, Optional[bytes]] = {}
    for record in changelog:
        if record.offset <= upto:
            expected[record.key] = record.value
    local = {k: v for k, v in rows.items() if k != OFFSET_KEY}
    stale = [k for k, v in expected.items() if local.get(k) != v]
    extra = [k for k in local if k not in expected]
    out = [f"{k!r} is not the changelog's last value up to {upto} (have {local.get(k)!r:.60})" for k in stale[:3]]
    out += [f"{k!r} is not in the changelog up to {upto}" for k in extra[:3]]
    if out:
        out.insert(0, f"{len(stale)} stale, {len(extra)} extra")
    return out


def test_standby_copies_hold_every_changelog_record_through_rebalances_under_load(worker_factory, names,
                                                                                   kafka_bootstrap):
    w1 = worker_factory("w1", partitions=PARTITIONS)
    w2 = worker_factory("w2", partitions=PARTITIONS)
    w3 = worker_factory("w3", partitions=PARTITIONS, start=False)
    w1.wait_ready()
    w2.wait_ready()
    total = 0
    with ThreadPoolExecutor(1) as pool:
        for cycle in range(CYCLES):
            records = _cycle_records(cycle)
            total += ACCOUNTS_PER_CYCLE
            producing = pool.submit(produce, kafka_bootstrap, names["events"], records)
            # The group changes while the changelogs of the fresh accounts stream into the standby copies.
            if cycle % 2 == 0:
                w3.start()
                w3.wait_ready()
            else:
                w3.stop()
            w1.wait_ready()
            w2.wait_ready()
            producing.result(120)  # what the producer met, raised here

    def folded() -> int:
        """Accounts in the listing (every partition, both workers)."""
        count, cursor = 0, None
        while True:
            status, body = get(f"{w1.url}/tables/accounts?limit=1000" + (f"&cursor={cursor}" if cursor else ""),
                               timeout=30)
            if status != 200:
                return -1
            count += len(body["rows"])
            cursor = body["next_cursor"]
            if cursor is None:
                return count

    wait_for(lambda: folded() >= total, 180, f"all {total} accounts to be folded")
    # Standby copies read their changelogs to the end, then both stop (a stop applies what is buffered).
    for worker in (w1, w2):
        worker.terminate()
    for worker in (w1, w2):
        worker.stop()

    changelogs: dict[str, dict[int, list[Any]]] = {}
    problems = []
    checked = 0
    for worker in (w1, w2):
        for (table, partition), rows in _local_partitions(worker.data_dir).items():
            if table not in changelogs:
                by_partition: dict[int, list[Any]] = {}
                for record in read_topic(kafka_bootstrap, f"{names['app_id']}-{table}-changelog"):
                    by_partition.setdefault(record.partition, []).append(record)
                changelogs[table] = by_partition
            stale = _stale_keys(rows, changelogs[table].get(partition, []))
            checked += 1
            if stale:
                problems.append(f"{worker.name} {table}-{partition}: {'; '.join(stale)}")
    # Both workers hold a copy of every partition of every table (active or standby).
    assert checked >= 2 * PARTITIONS * 3, checked
    assert not problems, "local copies lack changelog records:\n" + "\n".join(problems)
