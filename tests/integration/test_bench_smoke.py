"""``projector bench`` end to end on a tiny workload: every contestant right, numbers present.

Speed is never asserted: the machine is shared and noisy. This only checks
that the bench runs every contestant against a real broker, verifies their
state, reports and writes its JSON, and leaves no process and no topic behind.
"""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from support import wait_for

from projector.bench.common import Kafka
from projector.bench.compare import CONTESTANTS, BenchConfig, format_table, run_bench
from projector.runtime.kafka import settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_bench_smoke(kafka_bootstrap, tmp_path):
    output = tmp_path / "bench.json"
    report = run_bench(BenchConfig(
        broker=f"kafka://{kafka_bootstrap}",
        events=3000,
        accounts=100,
        partitions=4,
        seed=3,
        timeout=120,
        output=output,
        start_broker=False,
        progress_every=2.0,
    ))

    by_name = {r["contestant"]: r for r in report["results"]}
    assert list(by_name) == ["projector", "naive-faust", "quix", "raw-aiokafka", "raw-confluent"] == list(CONTESTANTS)
    for name, r in by_name.items():
        assert r["state"] == "ok", f"{name}: {r['state']}: {r['detail']}"
        assert r["events"] == 3000
        assert r["accounts_checked"] == 100 and r["mismatches"] == 0
        assert r["events_per_s"] > 0, name
        assert r["cpu_s_per_million"] > 0 and r["peak_rss_mib"] > 0, name
        # Stopped, by its own PID, before the bench returned.
        assert r["stopped"].startswith(("stopped", "killed", "already exited")), r["stopped"]
        assert not os.path.exists(f"/proc/{r['pid']}/status") or _is_other_process(r["pid"])
    assert report["partitions"] == 4
    assert report["ratio_to_projector"]["projector"]["events_per_s"] == pytest.approx(1.0)
    for peer in CONTESTANTS[1:]:
        assert report["ratio_to_projector"][peer]["events_per_s"] > 0, peer
    assert [g["peer"] for g in report["goals"]] == ["naive-faust", "quix", "raw-aiokafka"]
    assert all(g["projector_over_peer"] > 0 for g in report["goals"])

    saved = orjson.loads(output.read_bytes())
    assert [r["state"] for r in saved["results"]] == ["ok"] * len(CONTESTANTS)
    assert saved["machine"]["nproc"] >= 1 and saved["broker"] == kafka_bootstrap
    table = format_table(report)
    assert all(name in table for name in CONTESTANTS)
    assert "goal: projector / quix events/s" in table and "projector bench-scale" in table
    # The run's topics are gone: the events topic, Faust's and Quix's changelogs, the control topic.
    tag = report["topic"].split("-")[1]
    wait_for(lambda: not [t for t in asyncio.run(_topics(kafka_bootstrap)) if tag in t], 30,
             "the run's topics to be deleted")


async def _topics(bootstrap: str) -> list[str]:
    kafka = Kafka(settings_for(f"kafka://{bootstrap}"))
    await kafka.start()
    try:
        return await kafka.list_topics()
    finally:
        await kafka.close()


def _is_other_process(pid: int) -> bool:
    """A PID may be reused at once; a reused one is not one of ours."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return True
    return b"projector" not in cmdline
