"""The image of deploy/container/Dockerfile, built by deploy/container/build.sh and run with podman.

Runs only with PROJECTOR_CONTAINER_TESTS=1 (CI sets it): the build needs podman (build.sh installs it with apt-get
when it runs as root), PyPI, and either a registry for python:3.11-slim or deb.debian.org for a debootstrap base.
The container shares the host's network (``--network host``) to reach the session's test broker on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Iterator

import orjson
import pytest
from support import REPO, free_port, get, produce, wait_for

from projector.demo.data import generate_histories

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # A first build makes a Debian base with debootstrap and installs from PyPI: minutes, not seconds.
    pytest.mark.timeout(1800),
    pytest.mark.skipif(os.environ.get("PROJECTOR_CONTAINER_TESTS") != "1",
                       reason="container tests run with PROJECTOR_CONTAINER_TESTS=1 (podman, a registry or debootstrap)"),
]

BUILD_SH = REPO / "deploy" / "container" / "build.sh"


def podman(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited with {out.returncode}:\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def image() -> tuple[str, dict[str, str]]:
    """(image name, environment for podman): what build.sh printed (IMAGE, and CONTAINERS_CONF if this host needs it)."""
    out = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"build.sh exited with {out.returncode}:\n{out.stderr[-4000:]}"
    env = dict(os.environ)
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env["IMAGE"], env


@pytest.fixture
def container(image: tuple[str, dict[str, str]], kafka_bootstrap: str, names: dict[str, str]) -> Iterator[dict]:
    """One worker container on a fresh named volume; removed (container, then volume) by id afterwards."""
    name, env = image
    port = free_port()
    volume = podman(env, "volume", "create", f"projector-test-{uuid.uuid4().hex[:10]}").stdout.strip()
    cid = ""
    try:
        cid = podman(env, "run", "--detach", "--network", "host", "--volume", f"{volume}:/var/lib/projector",
                     "--env", f"PROJECTOR_BROKER=kafka://{kafka_bootstrap}",
                     "--env", f"PROJECTOR_APP_ID={names['app_id']}",
                     "--env", f"PROJECTOR_EVENTS_TOPIC={names['events']}",
                     "--env", f"PROJECTOR_CONTROL_TOPIC={names['control']}",
                     "--env", "PROJECTOR_PARTITIONS=2",
                     "--env", "PROJECTOR_WEB_HOST=127.0.0.1",
                     "--env", f"PROJECTOR_WEB_PORT={port}",
                     name).stdout.strip()
        yield {"id": cid, "env": env, "url": f"http://127.0.0.1:{port}", "volume": volume}
    finally:
        if cid:
            podman(env, "rm", "--force", "--time", "30", cid, check=False, timeout=90)
        podman(env, "volume", "rm", "--force", volume, check=False)


def logs(c: dict) -> str:
    out = podman(c["env"], "logs", "--tail", "60", c["id"], check=False)
    return out.stdout + out.stderr


def test_the_image_runs_a_non_root_worker_that_folds_events_and_passes_its_health_check(container, kafka_bootstrap,
                                                                                       names):
    c = container

    def ready() -> bool:
        state = podman(c["env"], "inspect", "--format", "{{.State.Status}}", c["id"]).stdout.strip()
        if state != "running":
            raise AssertionError(f"the container is {state}:\n{logs(c)}")
        try:
            return get(f"{c['url']}/readyz", timeout=5)[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, 180, "the container's worker to answer 200 on /readyz")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- container log ---\n{logs(c)}") from None

    envelopes = list(generate_histories(10, 60, seed=20))
    last = {e["aggregate_id"]: e["version"] for e in envelopes}
    produce(kafka_bootstrap, names["events"], [(e["aggregate_id"].encode(), orjson.dumps(e)) for e in envelopes])

    def folded() -> bool:
        return all(get(f"{c['url']}/tables/accounts/{aid}")[1].get("version") == version
                   for aid, version in last.items())

    wait_for(folded, 120, "every account's row at its last version", interval=1.0)

    # The worker (PID 1 of the container) runs as the image's uid 10001, not root.
    status = podman(c["env"], "exec", c["id"], "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {"10001"}, uids
    # Its state lives on the volume (PROJECTOR_DATA_DIR=/var/lib/projector).
    listing = podman(c["env"], "exec", c["id"], "ls", "-A", "/var/lib/projector").stdout.split()
    assert listing, "nothing in the data volume"
    # The image's HEALTHCHECK (GET /healthz with python, no curl in the image) passes.
    health = podman(c["env"], "healthcheck", "run", c["id"], check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    # SIGTERM (podman stop) ends it cleanly, well before podman would kill it.
    podman(c["env"], "stop", "--time", "60", c["id"], timeout=90)
    code = podman(c["env"], "inspect", "--format", "{{.State.ExitCode}}", c["id"]).stdout.strip()
    assert code == "0", f"exit code {code}:\n{logs(c)}"
