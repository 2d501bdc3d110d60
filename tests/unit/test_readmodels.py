"""projector.readmodels: loading the read-model folder by path, and its errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from projector.readmodels import PACKAGE, ReadModelError, default_tables_dir, load_read_models

pytestmark = pytest.mark.usefixtures("clean_table_modules")

GOOD = """
NAME = "{name}"
DESCRIPTION = "counts events"
HANDLES = ("Happened",)

def fold(state, event):
    return (state or 0) + 1
"""


def write(folder: Path, filename: str, source: str) -> Path:
    path = folder / filename
    path.write_text(textwrap.dedent(source))
    return path


def load_error(folder: Path) -> str:
    with pytest.raises(ReadModelError) as info:
        load_read_models(folder)
    return str(info.value)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "rm_tables"
    d.mkdir()
    return d


# --- good folders ------------------------------------------------------------------


def test_loads_every_module_sorted_by_file_name(folder):
    write(folder, "zz_second.py", GOOD.format(name="second"))
    write(folder, "aa_first.py", GOOD.format(name="first"))
    models = load_read_models(folder)
    assert [m.name for m in models] == ["first", "second"]
    first = models[0]
    assert first.description == "counts events"
    assert first.handles == frozenset({"Happened"})
    assert first.fold(None, None) == 1
    assert first.initial is None
    assert first.keyed_by_aggregate
    assert first.module.__name__ == f"{PACKAGE}.aa_first"


def test_optional_initial_key_and_description(folder):
    write(
        folder,
        "rm_opts.py",
        """
        NAME = "opts"
        HANDLES = ["A", "B"]
        INITIAL = {"items": []}

        def fold(state, event):
            return state

        def key(event):
            return "k"
        """,
    )
    [model] = load_read_models(folder)
    assert model.description == ""
    assert model.handles == frozenset({"A", "B"})
    assert not model.keyed_by_aggregate
    assert model.key(None) == "k"
    state = model.initial_state()
    assert state == {"items": []}
    state["items"].append(1)
    assert model.initial_state() == {"items": []}, "initial_state() must be a fresh copy"


def test_private_and_non_python_files_are_skipped(folder):
    write(folder, "rm_good.py", GOOD.format(name="good"))
    write(folder, "_helpers.py", "raise RuntimeError('must not be imported')\n")
    write(folder, "notes.txt", "not python")
    (folder / "sub").mkdir()
    write(folder / "sub", "rm_nested.py", "raise RuntimeError('must not be imported')\n")
    assert [m.name for m in load_read_models(folder)] == ["good"]


def test_repository_tables_folder_loads_accounts(monkeypatch):
    monkeypatch.delenv("PROJECTOR_TABLES_DIR", raising=False)
    names = [m.name for m in load_read_models()]
    assert "accounts" in names
    assert "tables" not in sys.modules or not hasattr(sys.modules["tables"], "fold"), \
        "the read models must not be imported as the package 'tables'"


def test_tables_dir_can_be_set_from_the_environment(monkeypatch, folder):
    write(folder, "rm_env.py", GOOD.format(name="from_env"))
    monkeypatch.setenv("PROJECTOR_TABLES_DIR", str(folder))
    assert default_tables_dir() == folder
    assert [m.name for m in load_read_models()] == ["from_env"]


def test_default_tables_dir_is_beside_the_package(monkeypatch):
    monkeypatch.delenv("PROJECTOR_TABLES_DIR", raising=False)
    assert default_tables_dir() == Path(__file__).resolve().parents[2] / "tables"


# --- bad folders: every error names the file -------------------------------------------


def test_missing_name(folder):
    path = write(folder, "rm_noname.py", "HANDLES = ('A',)\ndef fold(s, e):\n    return s\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "NAME" in msg


@pytest.mark.parametrize("bad", ["'Accounts'", "'1abc'", "''", "'has-dash'", "'a b'", "42", "None",
                                 "'x' * 64", "'_under'"])
def test_bad_name(folder, bad):
    path = write(folder, "rm_badname.py", f"NAME = {bad}\nHANDLES = ('A',)\ndef fold(s, e):\n    return s\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "NAME must match" in msg


def test_longest_allowed_name(folder):
    write(folder, "rm_long.py", GOOD.format(name="a" * 63))
    assert [m.name for m in load_read_models(folder)] == ["a" * 63]


def test_name_with_trailing_newline_is_refused(folder):
    write(folder, "rm_newline.py", "NAME = 'accounts\\n'\nHANDLES = ('A',)\ndef fold(s, e):\n    return s\n")
    load_error(folder)


@pytest.mark.parametrize("handles", ["()", "[]", "set()", "'Happened'", "('A', 1)", "(None,)"])
def test_bad_handles(folder, handles):
    path = write(folder, "rm_handles.py", f"NAME = 'h'\nHANDLES = {handles}\ndef fold(s, e):\n    return s\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "HANDLES" in msg


def test_missing_handles(folder):
    path = write(folder, "rm_nohandles.py", "NAME = 'h'\ndef fold(s, e):\n    return s\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "HANDLES" in msg


@pytest.mark.parametrize("handles", ["None", "5"])
def test_non_iterable_handles(folder, handles):
    path = write(folder, "rm_handles.py", f"NAME = 'h'\nHANDLES = {handles}\ndef fold(s, e):\n    return s\n")
    msg = load_error(folder)
    assert str(path) in msg


def test_missing_fold(folder):
    path = write(folder, "rm_nofold.py", "NAME = 'f'\nHANDLES = ('A',)\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "fold" in msg


def test_fold_not_callable(folder):
    path = write(folder, "rm_foldval.py", "NAME = 'f'\nHANDLES = ('A',)\nfold = 3\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "fold must be a function" in msg


def test_key_not_callable(folder):
    path = write(folder, "rm_keyval.py", GOOD.format(name="k") + "\nkey = 'aggregate_id'\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "key must be a function" in msg


def test_description_not_a_string(folder):
    path = write(folder, "rm_desc.py", GOOD.format(name="d") + "\nDESCRIPTION = ['x']\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "DESCRIPTION" in msg


def test_duplicate_name_names_both_files(folder):
    first = write(folder, "rm_a.py", GOOD.format(name="same"))
    second = write(folder, "rm_b.py", GOOD.format(name="same"))
    msg = load_error(folder)
    assert str(second) in msg
    assert str(first) in msg
    assert "'same'" in msg


def test_import_error_names_the_file_and_the_cause(folder):
    path = write(folder, "rm_broken.py", "import no_such_module_for_projector_tests\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "failed to import" in msg
    assert "no_such_module_for_projector_tests" in msg
    assert f"{PACKAGE}.rm_broken" not in sys.modules


def test_syntax_error_names_the_file(folder):
    path = write(folder, "rm_syntax.py", "NAME = 'x'\ndef fold(:\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "SyntaxError" in msg


def test_module_that_raises_at_import_names_the_file(folder):
    path = write(folder, "rm_raises.py", "raise RuntimeError('kaboom')\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "kaboom" in msg


def test_one_bad_module_fails_the_whole_folder(folder):
    write(folder, "rm_a_good.py", GOOD.format(name="good"))
    path = write(folder, "rm_b_bad.py", "NAME = 'bad'\n")
    assert str(path) in load_error(folder)


def test_init_file_is_refused(folder):
    write(folder, "rm_good.py", GOOD.format(name="good"))
    write(folder, "__init__.py", "")
    msg = load_error(folder)
    assert str(folder / "__init__.py") in msg
    assert "PyTables" in msg


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    msg = load_error(missing)
    assert str(missing) in msg
    assert "does not exist" in msg


def test_folder_without_read_models(folder):
    write(folder, "_private.py", GOOD.format(name="hidden"))
    msg = load_error(folder)
    assert str(folder) in msg
    assert "no read models" in msg


def test_a_file_instead_of_a_folder(tmp_path):
    path = write(tmp_path, "rm_file.py", GOOD.format(name="file"))
    assert str(path) in load_error(path)
