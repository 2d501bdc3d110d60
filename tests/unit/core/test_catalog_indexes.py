"""projector.core.catalog: a read model's INDEXES, parsed and checked."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from projector.core.catalog import load_catalog
from projector.core.errors import ReadModelError

pytestmark = pytest.mark.usefixtures("clean_table_modules")

MODEL = """
NAME = "things"
HANDLES = ("Happened",)

def fold(state, event):
    return {"colour": "red"}

def colour(value):
    return value["colour"]

"""

SOURCE = """
NAME = "things"
HANDLES = ("Happened",)

def fold(state, event):
    return {"colour": "red"}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "idx_tables"
    d.mkdir()
    return d


def load(folder: Path, source: str, filename: str = "things.py"):
    (folder / filename).write_text(textwrap.dedent(source))
    return load_catalog(folder)


def error(folder: Path, source: str) -> str:
    with pytest.raises(ReadModelError) as info:
        load(folder, source)
    return str(info.value)


def test_indexes_are_parsed_into_a_read_only_mapping(folder):
    catalog = load(folder, MODEL + 'INDEXES = {"colour": colour, "shade_2": lambda v: [v["colour"]]}\n')
    [model] = catalog.models
    assert list(model.indexes) == ["colour", "shade_2"]
    assert model.indexes["colour"]({"colour": "blue"}) == "blue"
    assert isinstance(model.indexes, MappingProxyType)
    with pytest.raises(TypeError):
        model.indexes["other"] = len  # type: ignore[index]


def test_no_indexes_by_default(folder):
    [model] = load(folder, MODEL).models
    assert dict(model.indexes) == {}
    assert dict(load(folder, MODEL + "INDEXES = {}\n").models[0].indexes) == {}


@pytest.mark.parametrize("declaration, expected", [
    ('INDEXES = [colour]', "INDEXES must be a dict"),
    ('INDEXES = {"Colour": colour}', "INDEXES names must match [a-z][a-z0-9_]*, got 'Colour'"),
    ('INDEXES = {"": colour}', "INDEXES names must match"),
    ('INDEXES = {"a/b": colour}', "INDEXES names must match"),
    ('INDEXES = {1: colour}', "INDEXES names must match [a-z][a-z0-9_]*, got 1"),
    ('INDEXES = {"colour": "colour"}', "INDEXES['colour'] must be a function"),
])
def test_bad_indexes_are_refused_naming_the_module(folder, declaration, expected):
    msg = error(folder, MODEL + declaration + "\n")
    assert expected in msg
    assert str(folder / "things.py") in msg


def test_a_re_keyed_read_model_cannot_declare_indexes(folder):
    (folder / "source.py").write_text(textwrap.dedent(SOURCE))
    grouped = """
    NAME = "by_colour"
    SOURCE = "things"
    INDEXES = {"n": lambda v: "x"}

    def key(row):
        return row["colour"]

    def contribution(row):
        return {"n": 1}
    """
    msg = error(folder, grouped)
    assert "INDEXES is for read models keyed by aggregate id" in msg
    assert "SOURCE = 'things'" in msg


def test_the_demo_accounts_index_owner_and_status():
    from projector.core.catalog import default_tables_dir

    catalog = load_catalog(default_tables_dir())
    accounts = catalog.get("accounts")
    row = {"owner": "ann", "currency": "EUR", "balance": 0, "status": "open", "deposits": 0, "withdrawals": 0}
    assert {name: f(row) for name, f in accounts.indexes.items()} == {"owner": "ann", "status": "open"}
    assert dict(catalog.get("owners").indexes) == {}
