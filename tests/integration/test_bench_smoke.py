"""``projector bench`` end to end on a tiny workload: both contestants right, numbers present.

Speed is never asserted: the machine is shared and noisy. This only checks
that the bench runs both contestants against a real broker, verifies their
state, reports and writes its JSON, and leaves no process running.
"""

from __future__ import annotations

import os

import orjson
import pytest

from projector.bench import BenchConfig, format_table, run_bench

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
    assert list(by_name) == ["projector", "naive-faust"]
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
    assert report["ratio_to_projector"]["naive-faust"]["events_per_s"] > 0

    saved = orjson.loads(output.read_bytes())
    assert [r["state"] for r in saved["results"]] == ["ok", "ok"]
    assert saved["machine"]["nproc"] >= 1 and saved["broker"] == kafka_bootstrap
    table = format_table(report)
    assert "projector" in table and "naive-faust" in table


def _is_other_process(pid: int) -> bool:
    """A PID may be reused at once; a reused one is not one of ours."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return True
    return b"projector" not in cmdline
