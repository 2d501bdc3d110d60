"""deploy/k8s: the kustomize base renders, every object is valid Kubernetes, and it runs projector as it must.

Rendered with ``kubectl kustomize`` when kubectl is installed; without it, with a small
Python render of what this base uses (resources, labels, configMapGenerator, images), which
``test_python_render_matches_kubectl`` keeps equal to kubectl's. Built-in kinds are checked
with kubernetes-validate (strict: no unknown fields) against an older and the newest
Kubernetes it ships. The Prometheus Operator's kinds (ServiceMonitor, PrometheusRule) have no
schema there: their fields are checked here, one by one.
"""

from __future__ import annotations

import copy
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from projector.runtime.config import Settings
from projector.runtime.kafka import KAFKA_WRITE_TIMEOUT
from projector.web.forwarding import FORWARD_TIMEOUT
from projector.worker import STOP_DEADLINE

BASE = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
#: The oldest Kubernetes still common, and the newest the pinned kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}



# --- rendering ----------------------------------------------------------------------------


def kubectl_render() -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def python_render() -> list[dict[str, Any]]:
    """What ``kubectl kustomize`` makes of this base, for the parts it uses (the generated
    ConfigMap's name without kustomize's hash suffix)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "labels", "resources", "configMapGenerator", "images"}, (
        "the Python render does not know every field of kustomization.yaml")
    docs = [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((BASE / name).read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) == {"name", "literals"}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                     "data": dict(literal.split("=", 1) for literal in generator["literals"])})
    for doc in docs:
        for entry in kustomization.get("labels", []):
            assert not entry.get("includeSelectors")
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and "template" in doc.get("spec", {}):
                templates = [doc["spec"]["template"], *doc["spec"].get("volumeClaimTemplates", [])]
                for template in templates:
                    template["metadata"].setdefault("labels", {}).update(entry["pairs"])
        for container in pod_spec(doc).get("containers", []) if doc["kind"] == "StatefulSet" else []:
            for image in kustomization.get("images", []):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return kubectl_render() if KUBECTL else python_render()


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name or '(any)'}"
    return found[0]


def pod_spec(statefulset: dict[str, Any]) -> dict[str, Any]:
    return statefulset["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(one(objects, "StatefulSet"))["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(objects)["env"]}


def headless(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Service", one(objects, "StatefulSet")["spec"]["serviceName"])


def secret_mount(objects: list[dict[str, Any]]) -> tuple[str, str]:
    """(mount path, Secret name) of the pods' one Secret volume."""
    volumes = [v for v in pod_spec(one(objects, "StatefulSet"))["volumes"] if "secret" in v]
    assert len(volumes) == 1
    mounts = [m for m in container(objects)["volumeMounts"] if m["name"] == volumes[0]["name"]]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    return mounts[0]["mountPath"], volumes[0]["secret"]["secretName"]


# --- the objects are valid ----------------------------------------------------------------


def test_the_base_has_every_object_the_deployment_needs(objects):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert [k for k, _ in kinds] == sorted(["ConfigMap", "PodDisruptionBudget", "PrometheusRule", "Service",
                                            "Service", "ServiceMonitor", "StatefulSet"])
    assert all("namespace" not in o["metadata"] for o in objects), "the namespace is the overlay's"
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "projector" for o in objects)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_builtin_object_is_valid_kubernetes(objects, version):
    checked = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is not valid Kubernetes {version}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")
        checked += 1
    assert checked == len(objects) - len(CRDS)


def test_the_validator_rejects_an_invalid_object(objects):
    """The check above can fail: an unknown field and a wrong type are caught."""
    bad = copy.deepcopy(one(objects, "StatefulSet"))
    bad["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(one(objects, "PodDisruptionBudget"))
    bad["spec"]["selector"] = "projector"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_the_secret_example_is_valid_and_holds_every_key_the_base_reads(objects):
    secret = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    kubernetes_validate.validate(secret, K8S_VERSIONS[-1], strict=True)
    mount, name = secret_mount(objects)
    assert secret["metadata"]["name"] == name
    files = {e["value"] for n, e in env_of(objects).items() if n.endswith("_FILE")}
    assert {f"{mount}/{key}" for key in secret["stringData"]} == files
    resources = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    assert "secret.example.yaml" not in resources, "the example must not be deployed: its tokens are known"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the objects were rendered in Python only")
def test_python_render_matches_kubectl():
    rendered = kubectl_render()
    config = one(rendered, "ConfigMap")["metadata"]["name"]
    assert re.fullmatch(r"projector-config-[a-z0-9]{10}", config)
    text = yaml.safe_dump_all(rendered, sort_keys=True).replace(config, "projector-config")
    by_kind = sorted(yaml.safe_load_all(text), key=lambda o: (o["kind"], o["metadata"]["name"]))
    ours = sorted(python_render(), key=lambda o: (o["kind"], o["metadata"]["name"]))
    assert by_kind == ours


# --- the StatefulSet ----------------------------------------------------------------------


def test_statefulset_runs_three_workers_in_parallel_under_the_headless_service(objects):
    sts = one(objects, "StatefulSet", "projector")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    service = headless(objects)
    assert service["spec"]["clusterIP"] == "None"
    # Peers reach a worker that is still recovering (it is a group member).
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert container(objects)["image"] == "projector:latest"
    assert "command" not in container(objects) and "args" not in container(objects), "the image's entry point runs"


def test_each_pod_has_its_own_volume_at_the_data_dir(objects):
    sts = one(objects, "StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    data_dir = env_of(objects)["PROJECTOR_DATA_DIR"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir
    assert claim["metadata"]["name"] not in {v["name"] for v in pod_spec(sts)["volumes"]}, "not shadowed by a volume"


def test_each_worker_advertises_its_pod_dns_name_and_binds_every_address(objects):
    env = env_of(objects)
    names = list(env)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    service = headless(objects)["metadata"]["name"]
    assert env["PROJECTOR_WEB_HOST"]["value"] == f"$(POD_NAME).{service}.$(POD_NAMESPACE).svc"
    # $(VAR) expands only variables defined earlier in the list.
    assert names.index("POD_NAME") < names.index("PROJECTOR_WEB_HOST")
    assert names.index("POD_NAMESPACE") < names.index("PROJECTOR_WEB_HOST")
    assert env["PROJECTOR_WEB_BIND"]["value"] == "0.0.0.0"
    assert env["PROJECTOR_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (port,) = container(objects)["ports"]
    assert int(env["PROJECTOR_WEB_PORT"]["value"]) == port["containerPort"] == 6066
    assert pod_spec(one(objects, "StatefulSet"))["enableServiceLinks"] is False, (
        "service links would add PROJECTOR_SERVICE_HOST, PROJECTOR_PORT, ... to the environment")


def test_probes_use_healthz_for_liveness_and_readyz_for_readiness(objects):
    c = container(objects)
    port = c["ports"][0]["name"]
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": port}
    # Recovery may take minutes: liveness allows a minute of silence, start-up more.
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 60
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    command = c["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"] and "/readyz" in command[2]


class _Worker(http.server.BaseHTTPRequestHandler):
    """/readyz as a worker answers it: 401 without the token (when it has one), else 200 or 503."""

    token: str | None = None
    ready = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/readyz":
            status = 404
        elif self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            status = 401
        else:
            status = 200 if self.ready else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("token,ready,exit_ok", [
    (None, True, True),
    (None, False, False),
    ("tok-1", True, True),
    ("tok-1", False, False),
])
def test_the_readiness_probe_asks_readyz_with_the_api_token_from_its_file(objects, tmp_path, token, ready, exit_ok):
    command = container(objects)["readinessProbe"]["exec"]["command"]
    handler = type("Handler", (_Worker,), {"token": token, "ready": ready})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
        env["PROJECTOR_WEB_PORT"] = str(server.server_address[1])
        if token is not None:
            (tmp_path / "api-token").write_text(token)  # a Secret's file: no line end
            env["PROJECTOR_API_TOKEN_FILE"] = str(tmp_path / "api-token")
        result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=60)
        assert (result.returncode == 0) == exit_ok, result.stderr.decode()
        if token is not None:  # the same worker, asked without the token, refuses: the probe sent it
            del env["PROJECTOR_API_TOKEN_FILE"]
            assert subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                                  timeout=60).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def test_grace_period_outlasts_a_clean_stop(objects):
    grace = pod_spec(one(objects, "StatefulSet"))["terminationGracePeriodSeconds"]
    assert grace > STOP_DEADLINE
    # The worker's own bounded waits fit in its deadline: a forward in flight, then a Kafka write.
    assert STOP_DEADLINE >= FORWARD_TIMEOUT + KAFKA_WRITE_TIMEOUT


def test_workers_run_as_non_root_with_a_group_that_owns_the_volume(objects):
    spec = pod_spec(one(objects, "StatefulSet"))
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["fsGroup"] == security["runAsGroup"]
    assert container(objects)["securityContext"]["allowPrivilegeEscalation"] is False
    (secret,) = [v["secret"] for v in spec["volumes"] if "secret" in v]
    assert secret["defaultMode"] & 0o040, "the Secret's files are root's: its group (fsGroup) must read them"
    assert not secret["defaultMode"] & 0o007, "and nobody else"
    assert "memory" in container(objects)["resources"]["limits"]


def test_tokens_come_from_files_in_the_mounted_secret(objects):
    env = env_of(objects)
    mount, _ = secret_mount(objects)
    for name in ("PROJECTOR_API_TOKEN", "PROJECTOR_ADMIN_TOKEN", "PROJECTOR_PEER_TOKEN"):
        assert name not in env, f"{name} in the environment: use {name}_FILE"
        assert Path(env[f"{name}_FILE"]["value"]).parent == Path(mount)
    config = one(objects, "ConfigMap")["data"]
    assert not [k for k in config if "TOKEN" in k or "PASSWORD" in k.removesuffix("_FILE")], "no secret in the ConfigMap"


def test_a_pod_environment_is_a_valid_worker_configuration(objects, tmp_path):
    """The environment a pod gets (ConfigMap, then env with $(VAR) expanded) is what Settings accepts."""
    mount, _ = secret_mount(objects)
    for key in ("api-token", "admin-token", "peer-token"):
        (tmp_path / key).write_text(f"{key}-value")
    c = container(objects)
    (source,) = c["envFrom"]
    config = one(objects, "ConfigMap", source["configMapRef"]["name"])
    env: dict[str, str] = dict(config["data"])
    fields = {"metadata.name": "projector-1", "metadata.namespace": "bank"}
    for e in c["env"]:
        value = fields[e["valueFrom"]["fieldRef"]["fieldPath"]] if "valueFrom" in e else e["value"]
        env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value).replace(mount, str(tmp_path))
    settings = Settings.from_env(env)
    assert settings.web_host == "projector-1.projector-headless.bank.svc"
    assert settings.bind_address == "0.0.0.0"
    assert settings.url == "http://projector-1.projector-headless.bank.svc:6066"
    assert (settings.api_token, settings.admin_token, settings.peer_token) == (
        "api-token-value", "admin-token-value", "peer-token-value")
    assert settings.data_dir == Path("/var/lib/projector")
    assert env["PROJECTOR_INSTANCE_ID"] == "projector-1" == settings.instance_id
    assert settings.leave_on_stop is False  # a rolling update moves no partition


# --- Services, PodDisruptionBudget --------------------------------------------------------


def test_services_select_the_workers_on_the_named_port(objects):
    pod_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    client = one(objects, "Service", "projector")
    assert client["spec"]["type"] == "ClusterIP" and client["spec"].get("clusterIP") != "None"
    assert not client["spec"].get("publishNotReadyAddresses"), "clients reach only ready workers"
    for service in (client, headless(objects)):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"] == [{"name": "http", "port": 6066, "targetPort": "http", "protocol": "TCP"}]


def test_pod_disruption_budget_lets_one_worker_go_at_a_time(objects):
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- ServiceMonitor and PrometheusRule (CRDs: no schema in kubernetes-validate) -----------


def test_service_monitor_scrapes_metrics_on_the_headless_service_with_the_api_token(objects):
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    # The headless Service only (it lists not-ready workers too), not the client Service as well.
    selector = monitor["spec"]["selector"]["matchLabels"]
    matched = [s["metadata"]["name"] for s in objects
               if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()]
    assert matched == [headless(objects)["metadata"]["name"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "authorization", "relabelings"}
    assert endpoint["port"] == headless(objects)["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    assert re.fullmatch(r"\d+[sm]", endpoint["interval"])
    # /metrics needs the API token when one is set: the same Secret key the pods read.
    mount, secret = secret_mount(objects)
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert credentials["name"] == secret
    assert f"{mount}/{credentials['key']}" == env_of(objects)["PROJECTOR_API_TOKEN_FILE"]["value"]
    for relabel in endpoint["relabelings"]:
        assert set(relabel) <= {"sourceLabels", "targetLabel", "action", "regex", "replacement"}


def prometheus_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    (group,) = rule["spec"]["groups"]
    assert group["name"] == "projector" and set(group) == {"name", "rules"}
    return group["rules"]


def test_prometheus_rule_equals_the_prometheus_alert_file(objects):
    """The PrometheusRule holds deploy/prometheus/alerts.yaml's rules, which test_deploy_monitoring checks."""
    alerts = BASE.parent / "prometheus" / "alerts.yaml"
    (group,) = yaml.safe_load(alerts.read_text())["groups"]
    assert group["name"] == "projector"
    assert group["rules"] == prometheus_rules(objects)


# --- the README's overlay -----------------------------------------------------------------


def readme_yaml_blocks() -> list[str]:
    readme = (BASE.parents[1] / "README.md").read_text()
    section = readme.split("\n## Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: overlays need kustomize itself")
def test_the_readme_overlay_sets_namespace_image_and_settings(tmp_path):
    overlay, deletions = readme_yaml_blocks()
    assert "  - ../deploy/k8s\n" in overlay
    # Next to deploy/, as in a checkout (kustomize takes no absolute path to a base).
    shutil.copytree(BASE, tmp_path / "deploy" / "k8s")
    (tmp_path / "my-overlay").mkdir()
    (tmp_path / "my-overlay" / "kustomization.yaml").write_text(overlay)
    out = subprocess.run([KUBECTL, "kustomize", str(tmp_path / "my-overlay")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    objects = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    assert {o["metadata"].get("namespace") for o in objects} == {"projector"}
    assert container(objects)["image"] == "registry.example.com/projector:1.0"
    config = one(objects, "ConfigMap")
    assert container(objects)["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert config["data"]["PROJECTOR_APP_ID"] == "bank"
    assert config["data"]["PROJECTOR_BROKER"].startswith("kafka://kafka-0.kafka:9092,")
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) not in CRDS:
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    # Without the Prometheus Operator: the README's patches leave its two kinds out.
    (tmp_path / "my-overlay" / "kustomization.yaml").write_text(overlay + deletions)
    out = subprocess.run([KUBECTL, "kustomize", str(tmp_path / "my-overlay")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(out.stdout) if doc)
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]
