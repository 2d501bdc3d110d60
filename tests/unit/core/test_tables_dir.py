"""Where a worker finds its read models: PROJECTOR_TABLES_DIR, the source checkout's tables/, ./tables, or an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from projector.core import catalog
from projector.core.catalog import default_tables_dir
from projector.core.errors import ReadModelError

REPO_TABLES = Path(__file__).resolve().parents[3] / "tables"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The package as pip installs it: in site-packages, no pyproject.toml nor tables/ beside it."""
    site = tmp_path / "site-packages"
    (site / "projector").mkdir(parents=True)
    monkeypatch.setattr(catalog, "SOURCE_ROOT", site)
    monkeypatch.delenv("PROJECTOR_TABLES_DIR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_the_variable_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECTOR_TABLES_DIR", str(tmp_path / "mine"))
    (tmp_path / "tables").mkdir()
    monkeypatch.chdir(tmp_path)
    assert default_tables_dir() == tmp_path / "mine"


def test_a_source_checkout_uses_its_own_tables_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PROJECTOR_TABLES_DIR", raising=False)
    (tmp_path / "tables").mkdir()
    monkeypatch.chdir(tmp_path)  # ./tables exists too: the checkout's wins
    assert default_tables_dir() == REPO_TABLES
    assert catalog.load_catalog().get("accounts") is not None


def test_an_installed_projector_uses_tables_in_the_current_directory(installed):
    (installed / "tables").mkdir()
    assert default_tables_dir() == installed / "tables"


def test_a_site_packages_tables_folder_is_not_taken_for_the_projects(installed):
    # site-packages/tables is PyTables, not read models.
    (catalog.SOURCE_ROOT / "tables").mkdir()
    with pytest.raises(ReadModelError, match="PROJECTOR_TABLES_DIR"):
        default_tables_dir()


def test_an_installed_projector_without_a_folder_says_to_set_the_variable(installed):
    with pytest.raises(ReadModelError) as info:
        default_tables_dir()
    message = str(info.value)
    assert "set PROJECTOR_TABLES_DIR" in message
    assert str(installed / "tables") in message


def test_a_missing_folder_named_by_the_variable_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECTOR_TABLES_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ReadModelError, match=r"nowhere does not exist \(PROJECTOR_TABLES_DIR\)"):
        catalog.load_catalog()


def test_a_worker_without_read_models_stops_at_once_with_one_line(tmp_path):
    """`projector worker` of an installed projector, run where there is no tables/: exit 1, one line, no traceback."""
    script = (
        "import pathlib, sys\n"
        "from projector.core import catalog\n"
        f"catalog.SOURCE_ROOT = pathlib.Path({str(tmp_path / 'site')!r})\n"
        "from projector.cli import main\n"
        "main(['worker'])\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PROJECTOR_BROKER": "kafka://127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("projector: no read-model folder") and "PROJECTOR_TABLES_DIR" in lines[0]
