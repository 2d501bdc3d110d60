"""deploy/compose.yaml: a KRaft broker, three workers that can find each other, Prometheus and Grafana.

Checks the file's content; validates it with a compose tool when one is installed (`docker compose`, Debian's
`docker-compose` 1.29, or a `podman-compose` with `config`), and skips only that part when none is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
WORKERS = ("worker-1", "worker-2", "worker-3")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env(service: dict) -> dict[str, str]:
    value = service.get("environment") or {}
    if isinstance(value, list):
        value = dict(item.partition("=")[::2] for item in value)
    return {k: str(v) for k, v in value.items()}


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (the image the workers run)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    last = text[text.rindex("\nFROM "):]
    pairs = [p for line in last.splitlines() if line.startswith("ENV ") for p in line[4:].split()]
    return dict(p.partition("=")[::2] for p in pairs)


def test_three_workers_of_one_app_each_advertise_their_own_name_and_keep_their_own_volume(compose) -> None:
    services = compose["services"]
    assert set(WORKERS) <= set(services)
    data_dir = image_env()["PROJECTOR_DATA_DIR"]
    hosts, volumes, ports, app_ids = [], [], [], set()
    for name in WORKERS:
        worker = services[name]
        e = env(worker)
        build = worker["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert e["PROJECTOR_WEB_HOST"] == worker["hostname"] == name, "workers reach each other by service name"
        assert e["PROJECTOR_WEB_BIND"] == "0.0.0.0"
        assert e["PROJECTOR_BROKER"] == "kafka://kafka:9092"
        app_ids.add(e["PROJECTOR_APP_ID"])
        hosts.append(e["PROJECTOR_WEB_HOST"])
        [volume] = [v.split(":")[0] for v in worker["volumes"] if v.split(":")[1] == data_dir]
        assert volume in compose["volumes"], f"{name}: {volume} is a named volume"
        volumes.append(volume)
        [port] = worker["ports"]
        published, _, target = str(port).rpartition(":")
        assert target == e.get("PROJECTOR_WEB_PORT", "6066")
        ports.append(published)
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(worker["healthcheck"]["test"])
        assert int(worker["stop_grace_period"].rstrip("s")) >= 30, "time for a clean SIGTERM hand-over"
    assert len(app_ids) == 1
    assert len(set(hosts)) == len(set(volumes)) == len(set(ports)) == 3, (hosts, volumes, ports)


def test_every_projector_variable_set_is_one_projector_reads(compose) -> None:
    source = "\n".join(p.read_text() for p in (REPO / "projector").rglob("*.py"))
    names = {k for service in compose["services"].values() for k in env(service) if k.startswith("PROJECTOR_")}
    assert names
    assert sorted(n for n in names if f'"{n}"' not in source) == []


def test_kafka_is_one_kraft_node_that_the_workers_wait_for(compose) -> None:
    kafka = compose["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    e = env(kafka)
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in e["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert e["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{e['KAFKA_NODE_ID']}@kafka:9093"
    assert kafka["healthcheck"]["test"]
    assert any(v.split(":")[1] == e["KAFKA_LOG_DIRS"] for v in kafka["volumes"]), "the log dir is a volume"


def test_prometheus_and_grafana_get_the_scrape_config_rules_and_dashboard(compose) -> None:
    prometheus, grafana = compose["services"]["prometheus"], compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for s in (prometheus, grafana) for v in s["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yaml"] == "./prometheus/alerts.yaml"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards/projector.json"] == "./grafana/projector.json"
    assert env(grafana)["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env(grafana)["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    published = {str(p).split(":")[0] for s in (prometheus, grafana) for p in s["ports"]}
    assert published == {"9090", "3000"}


def test_every_mounted_host_path_exists(compose) -> None:
    missing = []
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                if not path.exists():
                    missing.append(source)
    assert missing == []


def compose_tool() -> list[str] | None:
    """A command that validates a compose file offline, with what it needs of the file (see the caller)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    for name in ("docker-compose", "podman-compose"):
        found = shutil.which(name)
        if found and "config" in subprocess.run([found, "--help"], capture_output=True, text=True).stdout:
            return [found]
    return None


def test_a_compose_tool_accepts_the_file(compose, tmp_path: Path) -> None:
    tool = compose_tool()
    if tool is None:
        pytest.skip("no compose tool with `config` here (docker compose, docker-compose or podman-compose)")
    args = ["-f", str(COMPOSE)]
    version = subprocess.run([*tool, "version"], capture_output=True, text=True).stdout
    if tool[0].endswith("docker-compose") and re.search(r"\b1\.\d+\.\d+", version):
        # docker-compose 1.x (Debian's) validates against a compose spec from before the top-level `name`.
        path = tmp_path / "compose.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in compose.items() if k != "name"}))
        args = ["-f", str(path), "--project-directory", str(DEPLOY)]
    out = subprocess.run([*tool, *args, "config"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
