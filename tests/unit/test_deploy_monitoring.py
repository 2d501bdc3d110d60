"""deploy/grafana and deploy/prometheus, read as files: the dashboard, the alert rules, the provisioning.

Whether the metrics they name exist is checked against a live worker in
tests/integration/test_dashboard_metrics.py. ``promtool`` checks the rules and
the Prometheus config too when it is installed (it is not installed for the tests).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "projector.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "projector.yaml"

#: The rules as agreed for deploy/prometheus and the Kubernetes PrometheusRule: expr, for, severity.
RULES = {
    "ProjectorLagGrowing": (
        "sum by (instance) (projector_consumer_lag) > 1000 and "
        "deriv(sum by (instance) (projector_consumer_lag)[10m:1m]) > 0", "10m", "warning"),
    "ProjectorWorkerNotReady": ("projector_ready == 0", "5m", "critical"),
    "ProjectorDeadLettersRising": (
        "sum by (instance, reason) (increase(projector_deadletter_total[10m])) > 0", "5m", "warning"),
    "ProjectorRecoveryStalled": (
        "projector_recovery_in_progress == 1 and on (instance) rate(projector_recovery_restored_total[10m]) == 0",
        "10m", "critical"),
}
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_the_alert_rules_are_the_agreed_ones_and_each_is_complete() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    assert [g["name"] for g in doc["groups"]] == ["projector"]
    rules = doc["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == list(RULES)
    for rule in rules:
        expr, for_, severity = RULES[rule["alert"]]
        assert " ".join(rule["expr"].split()) == expr, rule["alert"]
        assert rule["for"] == for_, rule["alert"]
        assert rule["labels"]["severity"] == severity, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, rule["alert"]
        assert all(len(annotations[k].strip()) > 20 for k in ("summary", "description")), rule["alert"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        # Prometheus' template syntax: balanced {{ }} around $labels / $value.
        for text in annotations.values():
            assert text.count("{{") == text.count("}}"), rule["alert"]
            assert set(re.findall(r"\{\{\s*(\$\w+)", text)) <= {"$labels", "$value"}, rule["alert"]


def test_the_dashboard_is_grafana_json_and_every_panel_queries_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "projector" and dashboard["title"] == "projector"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"], source["current"]["value"]) == ("datasource", "prometheus", "prometheus")
    assert variables["instance"]["datasource"] == DS
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == DS, title
        assert panel["targets"], f"{title!r} has no target"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], title
            assert target["datasource"] == DS, title
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("lag", "events per second", "recovery eta", "build", "dead letters", "parked aggregates",
                   "lookup latency", "command latency", "event loop lag", "ready"):
        assert wanted in titles, f"no panel for {wanted}"
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert 'projector_request_seconds_bucket{instance=~"$instance", kind="lookup"}' in exprs
    assert 'projector_request_seconds_bucket{instance=~"$instance", kind="command"}' in exprs
    assert "histogram_quantile(0.99, sum by (instance, le) (rate(projector_event_loop_lag_seconds_bucket" in exprs


def test_prometheus_scrapes_the_compose_workers_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yaml"]
    assert (PROMETHEUS.parent / config["rule_files"][0]).is_file()
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["worker-1:6066", "worker-2:6066", "worker-3:6066"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert (source["uid"], source["type"], source["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    [provider] = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_the_config() -> None:
    for args in (["check", "rules", str(ALERTS)], ["check", "config", "--syntax-only", str(PROMETHEUS)]):
        proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
