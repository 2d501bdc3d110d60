"""``/metrics`` through prometheus-client: the collector, both formats, the new metrics, and the request timer.

The collector reads a stand-in worker: real :class:`Metrics` and a real control
table, the rest plain values. The names in Prometheus text are the ones the
hand-written exposition had (``OLD_TYPES``), so dashboards, alerts and the
benchmarks that read them keep working.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from projector.core.catalog import load_catalog
from projector.core.control import ControlState
from projector.core.lifecycle import TableState
from projector.core.metrics import Metrics
from projector.runtime.config import Settings
from projector.runtime.waiters import ParkingLimit
from projector.web.metrics import REQUEST_BUCKETS, REQUEST_KINDS, WorkerMetrics, prometheus_text, worker_metrics
from projector.web.middleware import web_application_options
from projector.web.routes import install_routes

TABLES_DIR = Path(__file__).resolve().parents[3] / "tables"
TP = namedtuple("TP", "topic partition")
OPENMETRICS = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"

#: Every ``# TYPE`` line the hand-written exposition wrote, as it wrote it.
OLD_TYPES = """\
projector_events_applied_total counter;projector_duplicates_total counter;projector_command_echoes_total counter;
projector_commands_total counter;projector_deadletter_total counter;projector_records_total counter;
projector_parked_total counter;projector_fold_batches_total counter;projector_fold_batch_seconds_total counter;
projector_fold_batch_seconds histogram;projector_first_record_time_seconds gauge;
projector_event_loop_lag_seconds histogram;projector_events_per_second gauge;projector_parked_requests gauge;
projector_command_answers_dropped_total counter;projector_batch_phase_seconds_total counter;
projector_consumer_lag gauge;projector_recovery_in_progress gauge;projector_recovery_remaining gauge;
projector_recovery_restored_total counter;projector_recovery_records_per_second gauge;
projector_recovery_eta_seconds gauge;projector_build_records_total counter;projector_build_skipped_total counter;
projector_build_remaining gauge;projector_build_eta_seconds gauge;projector_broker_reachable gauge;
projector_broker_reachable_changed_timestamp_seconds gauge;projector_control_offset gauge;
projector_control_entries gauge;projector_control_records_total counter;projector_control_gaps_total counter;
projector_control_filled_total counter;projector_control_missing_offsets gauge;
projector_control_invalid_total counter;projector_commands_enabled gauge;projector_control_setting gauge"""


@pytest.fixture(scope="module")
def catalog() -> Any:
    return load_catalog(TABLES_DIR)


def stand_in(catalog: Any) -> Any:
    """A worker with counters to read: three events applied, two dead letters, a build and a recovery under way."""
    p = mock.MagicMock(name="projector")
    p.catalog = catalog
    p.metrics = Metrics()
    p.metrics.events_applied["accounts"] = 3
    p.metrics.deadletters["version_gap"] = 2
    p.metrics.records_seen = 3
    p.metrics.commands["applied"] = 1
    p.metrics.observe_lag(0.003)
    p.metrics.observe_batch(0.02)
    p.metrics.build_records["accounts"] = 7
    p.control = ControlState(catalog.control_settings)
    p.consumer_lag.return_value = [("events", 0, 5), ("events", 1, 0)]
    p.rows.parked = 0
    p.commands.dropped_answers = 0
    recovery = p.app.tables.recovery
    recovery.in_recovery = True
    recovery.standby_remaining.return_value = {}
    recovery.active_remaining.return_value = {TP("cl", 0): 40}
    p.recovery_progress = SimpleNamespace(
        restored_total=10, rate=5.0,
        partitions=[SimpleNamespace(kind="active", topic="cl", partition=0, eta_seconds=8.0)])
    p.builds.builds = {"accounts": object()}
    p.builds.summary.return_value = {"remaining": 5, "eta_seconds": 2.0, "version": 2}
    p.broker.reachable = True
    p.broker.since = 1234.5
    p.readiness.return_value = (True, "ready")
    p.parked_aggregates.return_value = 2
    return p


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str, **labels: str) -> float:
    found = [s.value for s in fams[family].samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, fams[family].samples)
    return found[0]


def test_prometheus_text_declares_every_name_it_always_did(catalog: Any) -> None:
    text = WorkerMetrics(stand_in(catalog)).exposition()[0].decode()
    lines = set(text.splitlines())
    missing = [t for t in OLD_TYPES.replace("\n", "").split(";") if f"# TYPE {t}" not in lines]
    assert missing == []
    # A counter keeps its _total in Prometheus text; its samples, labels and values are the worker's.
    assert 'projector_events_applied_total{table="accounts"} 3.0' in lines
    assert 'projector_deadletter_total{reason="version_gap"} 2.0' in lines
    assert "projector_records_total 3.0" in lines
    fams = families(text)
    assert sample(fams, "projector_consumer_lag", "projector_consumer_lag", topic="events", partition="0") == 5
    assert sample(fams, "projector_recovery_remaining", "projector_recovery_remaining", topic="cl", partition="0") == 40
    assert sample(fams, "projector_recovery_eta_seconds", "projector_recovery_eta_seconds",
                  topic="cl", partition="0") == 8.0
    assert sample(fams, "projector_recovery_restored", "projector_recovery_restored_total") == 10
    assert sample(fams, "projector_build_remaining", "projector_build_remaining", table="accounts", version="2") == 5
    assert sample(fams, "projector_build_eta_seconds", "projector_build_eta_seconds",
                  table="accounts", version="2") == 2.0
    assert sample(fams, "projector_commands", "projector_commands_total", outcome="applied") == 1
    assert sample(fams, "projector_event_loop_lag_seconds", "projector_event_loop_lag_seconds_bucket",
                  le="0.005") == 1
    assert sample(fams, "projector_fold_batch_seconds", "projector_fold_batch_seconds_count") == 1
    assert "projector_control_setting" in fams


def test_the_new_metrics_ready_parked_aggregates_and_request_seconds(catalog: Any) -> None:
    p = stand_in(catalog)
    metrics = WorkerMetrics(p)
    metrics.requests.observe("lookup", 0.002)
    metrics.requests.observe("lookup", 60.0)
    metrics.requests.observe("command", 0.2)
    fams = families(metrics.exposition()[0].decode())
    assert sample(fams, "projector_ready", "projector_ready") == 1
    assert sample(fams, "projector_parked_aggregates", "projector_parked_aggregates") == 2
    requests = fams["projector_request_seconds"]
    assert requests.type == "histogram"
    assert {s.labels["kind"] for s in requests.samples} == set(REQUEST_KINDS)
    bucket = "projector_request_seconds_bucket"
    assert sample(fams, "projector_request_seconds", bucket, kind="lookup", le="0.0025") == 1
    assert sample(fams, "projector_request_seconds", bucket, kind="lookup", le="30.0") == 1
    assert sample(fams, "projector_request_seconds", bucket, kind="lookup", le="+Inf") == 2
    assert sample(fams, "projector_request_seconds", "projector_request_seconds_count", kind="lookup") == 2
    assert sample(fams, "projector_request_seconds", "projector_request_seconds_sum", kind="lookup") == 60.002
    assert sample(fams, "projector_request_seconds", "projector_request_seconds_count", kind="listing") == 0
    les = [s.labels["le"] for s in requests.samples if s.name == bucket and s.labels["kind"] == "command"]
    assert les == [str(b) for b in REQUEST_BUCKETS] + ["+Inf"]

    p.readiness.return_value = (False, "rebalancing")
    p.parked_aggregates.side_effect = RuntimeError("partition database closed")
    fams = families(metrics.exposition()[0].decode())
    assert sample(fams, "projector_ready", "projector_ready") == 0
    assert sample(fams, "projector_parked_aggregates", "projector_parked_aggregates") == -1, "unknown, not an error"


def test_process_and_gc_metrics_are_there(catalog: Any) -> None:
    fams = families(WorkerMetrics(stand_in(catalog)).exposition()[0].decode())
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds", "python_gc_objects_collected", "python_gc_collections", "python_info"} <= set(fams)
    assert fams["process_resident_memory_bytes"].samples[0].value > 0


def test_openmetrics_when_asked_and_it_parses(catalog: Any) -> None:
    metrics = WorkerMetrics(stand_in(catalog))
    body, content_type = metrics.exposition(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in openmetrics_families(text)}  # raises on anything OpenMetrics does not allow
    # OpenMetrics names a counter's family without _total; its samples keep it.
    assert fams["projector_events_applied"].type == "counter"
    assert any(s.name == "projector_events_applied_total" and s.labels == {"table": "accounts"} and s.value == 3
               for s in fams["projector_events_applied"].samples)
    assert fams["projector_request_seconds"].type == "histogram"
    assert fams["projector_ready"].samples[0].value == 1
    # The fold batch seconds counter would take the histogram's family name: the histogram's _sum has it.
    assert fams["projector_fold_batch_seconds"].type == "histogram"
    # Without an Accept header, or a Prometheus text one: text 0.0.4.
    for accept in (None, "", "text/plain;version=0.0.4", "*/*"):
        assert metrics.exposition(accept)[1] == "text/plain; version=0.0.4; charset=utf-8"


def test_each_worker_has_its_own_registry(catalog: Any) -> None:
    one, two = stand_in(catalog), stand_in(catalog)
    two.metrics.events_applied["accounts"] = 9
    assert worker_metrics(one) is worker_metrics(one)
    assert worker_metrics(one) is not worker_metrics(two)
    worker_metrics(one).requests.observe("index", 0.01)
    a, b = families(prometheus_text(one)), families(prometheus_text(two))
    assert sample(a, "projector_request_seconds", "projector_request_seconds_count", kind="index") == 1
    assert sample(b, "projector_request_seconds", "projector_request_seconds_count", kind="index") == 0
    assert sample(a, "projector_events_applied", "projector_events_applied_total", table="accounts") == 3
    assert sample(b, "projector_events_applied", "projector_events_applied_total", table="accounts") == 9
    assert "process_cpu_seconds" in a and "process_cpu_seconds" in b


def test_recovery_offsets_not_known_yet_leave_the_gauge_empty(catalog: Any) -> None:
    p = stand_in(catalog)
    p.app.tables.recovery.active_remaining.side_effect = KeyError("not built")
    fams = families(WorkerMetrics(p).exposition()[0].decode())
    assert fams["projector_recovery_remaining"].samples == []


# --- over HTTP: /metrics, and each request timed by kind -----------------------------------


def test_metrics_over_http_and_requests_timed_by_kind(catalog: Any) -> None:
    p = stand_in(catalog)
    p.partitions = 4
    p.settings = Settings(web_port=1, broker="kafka://127.0.0.1:1")
    p.model = catalog.get
    p.states = {m.name: TableState(m, m.version) for m in catalog.models}
    p.stopping = False
    p.recovered = True
    p.parking = ParkingLimit(p.settings.max_parked)
    p.broker.snapshot.return_value = {"reachable": True, "since": "2026-01-01T00:00:00Z"}

    async def main() -> None:
        app = web.Application(**web_application_options(p))
        install_routes(app, p)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            r = await client.get("/metrics")
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "projector_ready 1.0" in (await r.text()).splitlines()
            r = await client.get("/metrics", headers={"Accept": OPENMETRICS})
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
            list(openmetrics_families(await r.text()))
            # Whatever each answers (a stand-in has no rows), each request is timed under its kind.
            for method, path in [("GET", "/tables/accounts/acc-1"), ("GET", "/tables/accounts/acc-2"),
                                 ("GET", "/tables/accounts"), ("GET", "/tables/owners/index/currency/EUR"),
                                 ("GET", "/aggregates/acc-1/events"), ("POST", "/commands"),
                                 ("GET", "/nowhere"), ("DELETE", "/commands")]:
                async with client.request(method, path, json={} if method == "POST" else None) as r:
                    await r.read()
            r = await client.get("/metrics")
            return families(await r.text())

    fams = asyncio.run(main())
    counts = {kind: sample(fams, "projector_request_seconds", "projector_request_seconds_count", kind=kind)
              for kind in REQUEST_KINDS}
    # other: the two /metrics before, /nowhere and DELETE /commands (the /metrics being answered is not in yet).
    assert counts == {"lookup": 2, "listing": 1, "index": 1, "events": 1, "command": 1, "other": 4}
