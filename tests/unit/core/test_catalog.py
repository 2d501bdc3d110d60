"""projector.core.catalog: loading the read-model folder by path, and its errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from projector.core.catalog import (
    PACKAGE,
    DerivedModel,
    ReadModel,
    default_add,
    default_subtract,
    default_tables_dir,
    load_catalog,
    load_read_models,
)
from projector.core.errors import ReadModelError

TABLES_DIR = Path(__file__).resolve().parents[3] / "tables"

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


def test_optional_initial_and_description(folder):
    write(
        folder,
        "rm_opts.py",
        """
        NAME = "opts"
        HANDLES = ["A", "B"]
        INITIAL = {"items": []}

        def fold(state, event):
            return state
        """,
    )
    [model] = load_read_models(folder)
    assert model.description == ""
    assert model.handles == frozenset({"A", "B"})
    assert model.keyed_by_aggregate
    assert model.key is None
    state = model.initial_state()
    assert state == {"items": []}
    state["items"].append(1)
    assert model.initial_state() == {"items": []}, "initial_state() must be a fresh copy"


def test_key_of_event_without_source_is_refused(folder):
    # Re-keying event by event cannot follow an aggregate whose events do not
    # all carry the new key: a re-keyed model declares SOURCE, key(row), contribution(row).
    path = write(folder, "rm_keyed.py", GOOD.format(name="keyed") + "\ndef key(event):\n    return 'k'\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "SOURCE" in msg
    assert "contribution(row)" in msg


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
    assert default_tables_dir() == Path(__file__).resolve().parents[3] / "tables"


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


# --- re-keyed read models (SOURCE, key(row), contribution(row)) and the catalog --------------

GROUPED = """
NAME = "{name}"
DESCRIPTION = "grouped by colour"
SOURCE = "{source}"

def key(row):
    return row["colour"]

def contribution(row):
    return {{"n": 1, "total": row["total"]}}
"""


def test_repository_catalog_has_accounts_and_two_models_re_keyed_from_it():
    catalog = load_catalog(TABLES_DIR)
    assert [m.name for m in catalog.models] == ["accounts"]
    assert sorted(d.name for d in catalog.derived) == ["currencies", "owners"]
    for d in catalog.derived:
        assert isinstance(d, DerivedModel)
        assert d.source == "accounts"
        assert not d.keyed_by_aggregate
        assert d.initial_state() == {"accounts": 0, "open_accounts": 0, "balance": 0}
        assert d.add is default_add and d.subtract is default_subtract
    assert isinstance(catalog.get("accounts"), ReadModel)
    assert catalog.get("owners").group_key({"owner": "ann", "currency": "EUR"}) == "ann"
    assert catalog.get("currencies").group_key({"owner": "ann", "currency": "EUR"}) == "EUR"
    assert catalog.get("nope") is None
    assert [m.name for m in catalog.all] == ["accounts", *[d.name for d in catalog.derived]]
    assert len(catalog.modules) == 3


def test_load_read_models_lists_aggregate_keyed_models_before_re_keyed_ones(folder):
    # file order would put the re-keyed model first
    write(folder, "aa_grouped.py", GROUPED.format(name="by_colour", source="things"))
    write(folder, "zz_things.py", GOOD.format(name="things"))
    models = load_read_models(folder)
    assert [m.name for m in models] == ["things", "by_colour"]
    assert isinstance(models[0], ReadModel) and isinstance(models[1], DerivedModel)


def test_re_keyed_model_fields_and_defaults(folder):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    write(folder, "rm_grouped.py", GROUPED.format(name="by_colour", source="things"))
    d = load_catalog(folder).get("by_colour")
    assert (d.name, d.description, d.source) == ("by_colour", "grouped by colour", "things")
    assert d.group_key({"colour": "red", "total": 3}) == "red"
    assert d.contribution({"colour": "red", "total": 3}) == {"n": 1, "total": 3}
    assert d.initial is None
    state = d.initial_state()
    assert state == {}
    state["x"] = 1
    assert d.initial_state() == {}, "initial_state() must be a fresh copy"
    assert d.add({"n": 1, "total": 5}, {"n": 1, "total": 2, "new": 4}) == {"n": 2, "total": 7, "new": 4}
    assert d.subtract({"n": 2, "total": 7}, {"n": 1, "total": 2}) == {"n": 1, "total": 5}
    assert d.module.__name__ == f"{PACKAGE}.rm_grouped"


def test_default_add_and_subtract_do_not_change_their_arguments():
    state, c = {"a": 1}, {"a": 2, "b": 3}
    assert default_add(state, c) == {"a": 3, "b": 3}
    assert default_subtract(state, c) == {"a": -1, "b": -3}
    assert state == {"a": 1} and c == {"a": 2, "b": 3}


def test_re_keyed_model_with_its_own_add_subtract_and_initial(folder):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    write(
        folder,
        "rm_custom.py",
        GROUPED.format(name="custom", source="things")
        + "\nINITIAL = {'names': []}\n"
        + "def add(state, c):\n    return {'names': sorted(state['names'] + [c['total']])}\n"
        + "def subtract(state, c):\n    names = list(state['names'])\n    names.remove(c['total'])\n"
        + "    return {'names': names}\n",
    )
    d = load_catalog(folder).get("custom")
    assert d.initial_state() == {"names": []}
    assert d.add({"names": [3]}, {"total": 1}) == {"names": [1, 3]}
    assert d.subtract({"names": [1, 3]}, {"total": 3}) == {"names": [1]}


@pytest.mark.parametrize("missing", ["key", "contribution"])
def test_re_keyed_model_needs_key_and_contribution(folder, missing):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    source = GROUPED.format(name="grouped", source="things").replace(f"def {missing}(row)", "def _unused(row)")
    path = write(folder, "rm_grouped.py", source)
    msg = load_error(folder)
    assert str(path) in msg
    assert f"{missing}(row)" in msg


@pytest.mark.parametrize("attr", ["add", "subtract"])
def test_re_keyed_model_add_and_subtract_must_be_functions(folder, attr):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    path = write(folder, "rm_grouped.py", GROUPED.format(name="grouped", source="things") + f"\n{attr} = 5\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert f"{attr} must be a function" in msg


@pytest.mark.parametrize("source", ["'Things'", "None", "3", "''"])
def test_re_keyed_model_source_must_be_a_name(folder, source):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    path = write(folder, "rm_grouped.py", GROUPED.format(name="grouped", source="x").replace("'x'", source)
                 .replace('"x"', source))
    msg = load_error(folder)
    assert str(path) in msg
    assert "SOURCE" in msg


def test_re_keyed_model_over_an_unknown_source(folder):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    path = write(folder, "rm_grouped.py", GROUPED.format(name="grouped", source="nothing"))
    msg = load_error(folder)
    assert str(path) in msg
    assert "'nothing'" in msg


def test_re_keyed_model_over_another_re_keyed_model_is_refused(folder):
    write(folder, "rm_a_things.py", GOOD.format(name="things"))
    write(folder, "rm_b_grouped.py", GROUPED.format(name="grouped", source="things"))
    path = write(folder, "rm_c_regrouped.py", GROUPED.format(name="regrouped", source="grouped"))
    msg = load_error(folder)
    assert str(path) in msg
    assert "aggregate-keyed" in msg


def test_module_of_upcasters_only_is_loaded_but_is_no_read_model(folder):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    write(
        folder,
        "rm_upcasters.py",
        "SCHEMA_VERSIONS = {'Happened': 2}\nUPCASTERS = {('Happened', 1): lambda d: {**d, 'v': 2}}\n",
    )
    catalog = load_catalog(folder)
    assert [m.name for m in catalog.all] == ["things"]
    assert sorted(m.__name__ for m in catalog.modules) == [f"{PACKAGE}.rm_things", f"{PACKAGE}.rm_upcasters"]


def test_module_without_name_and_without_upcasters_is_still_an_error(folder):
    write(folder, "rm_things.py", GOOD.format(name="things"))
    path = write(folder, "rm_other.py", "X = 1\n")
    msg = load_error(folder)
    assert str(path) in msg
    assert "NAME" in msg
