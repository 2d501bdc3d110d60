"""The dashboard and the alert rules name only metrics a live worker exposes.

A real worker folds a few events (one of them a version gap, so a dead letter
and a parked aggregate), answers a lookup and a command, and is scraped in
both formats. Every ``projector_*``, ``process_*`` and ``python_*`` name in
``deploy/grafana/projector.json`` (panel targets and template queries) and
``deploy/prometheus/alerts.yaml`` must be on its ``/metrics`` (a histogram's
``_bucket``, ``_sum`` and ``_count`` count as the histogram), and the values
the operator pages on must say what happened.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from support import get, http, produce, wait_for

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "projector.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
METRIC = re.compile(r"\b(?:projector|process|python)_[a-zA-Z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def envelope(aid: str, version: int, type_: str, data: dict) -> tuple[bytes, bytes]:
    return aid.encode(), orjson.dumps({"id": f"{aid}-{version}", "aggregate_id": aid, "aggregate_type": "account",
                                       "type": type_, "version": version, "data": data})


def dashboard_exprs(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            yield f"variable {variable['name']!r}", query["query"] if isinstance(query, dict) else query


def alert_exprs(rules: dict) -> Iterator[tuple[str, str]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(f"{url}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.read().decode(), r.headers["Content-Type"]


def exposed(text: str) -> tuple[set[str], set[str]]:
    """Every name in a Prometheus text exposition (declared by ``# TYPE`` or sampled), and the histograms."""
    names, histograms = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                histograms.add(name)
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
    return names, histograms


def named(expr: str, histograms: set[str]) -> set[str]:
    """The metric names a PromQL expression reads (a histogram's series as the histogram)."""
    out = set()
    for name in METRIC.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in histograms:
                name = name[: -len(suffix)]
        out.add(name)
    return out


def test_dashboard_and_alerts_name_only_metrics_a_live_worker_exposes(worker_factory: Any, names: dict,
                                                                        kafka_bootstrap: str) -> None:
    worker = worker_factory(partitions=2)
    worker.wait_ready()
    # Two accounts; the second skips version 2: a version gap parks it and dead-letters the record.
    produce(kafka_bootstrap, names["events"], [
        envelope("dash-1", 1, "AccountOpened", {"owner": "o-1", "currency": "EUR"}),
        envelope("dash-1", 2, "MoneyDeposited", {"amount": 5}),
        envelope("dash-2", 1, "AccountOpened", {"owner": "o-2", "currency": "EUR"}),
        envelope("dash-2", 3, "MoneyDeposited", {"amount": 7}),
    ])

    def folded() -> Any:
        status, body = get(f"{worker.url}/tables/accounts/dash-1")
        return status == 200 and body["version"] == 2 and body

    wait_for(folded, 60, "dash-1 folded to version 2")
    status, body = http("POST", f"{worker.url}/commands", {
        "command_id": "dash-c1", "aggregate_type": "account", "aggregate_id": "dash-3",
        "type": "OpenAccount", "data": {"owner": "o-3", "currency": "EUR"}})
    assert status == 200, body

    def parked() -> Any:
        text, _ = scrape(worker.url)
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}
        return values.get(("projector_parked_aggregates", ())) == 1 and text

    text = wait_for(parked, 60, "projector_parked_aggregates 1 (dash-2 parked by its version gap)")
    names_exposed, histograms = exposed(text)

    lines = set(text.splitlines())
    assert 'projector_deadletter_total{reason="version_gap"} 1.0' in lines
    assert "projector_ready 1.0" in lines
    applied = [line for line in lines if line.startswith('projector_events_applied_total{table="accounts"} ')]
    assert len(applied) == 1 and float(applied[0].rsplit(" ", 1)[1]) >= 3, applied
    counts = {s.labels["kind"]: s.value for f in text_string_to_metric_families(text) if f.name ==
              "projector_request_seconds" for s in f.samples if s.name == "projector_request_seconds_count"}
    assert counts["lookup"] >= 1 and counts["command"] == 1, counts
    assert {"projector_request_seconds", "projector_event_loop_lag_seconds"} <= histograms

    missing = {}
    exprs = list(dashboard_exprs(json.loads(DASHBOARD.read_text()))) + list(alert_exprs(yaml.safe_load(ALERTS.read_text())))
    referenced = set()
    for where, expr in exprs:
        found = named(expr, histograms)
        assert found, f"{where} names no metric: {expr}"
        referenced |= found
        for name in found - names_exposed:
            missing.setdefault(name, []).append(where)
    assert missing == {}, f"named by the dashboard or alerts, not on the worker's /metrics: {missing}"
    # The issue's panels and the rules' inputs are all among them.
    assert {"projector_consumer_lag", "projector_events_per_second", "projector_recovery_eta_seconds",
            "projector_recovery_remaining", "projector_build_remaining", "projector_build_eta_seconds",
            "projector_deadletter_total", "projector_parked_aggregates", "projector_request_seconds",
            "projector_event_loop_lag_seconds", "projector_ready", "projector_recovery_in_progress",
            "projector_recovery_restored_total"} <= referenced

    # The same worker in OpenMetrics, when asked: it parses, and holds the same families.
    om_text, content_type = scrape(worker.url, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0"), content_type
    om = {f.name: f for f in openmetrics_families(om_text)}
    assert om["projector_parked_aggregates"].samples[0].value == 1
    assert om["projector_deadletter"].type == "counter"
    assert {"projector_request_seconds", "process_cpu_seconds", "python_gc_objects_collected"} <= set(om)
