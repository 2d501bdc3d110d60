"""projector.core.catalog: ``COMMAND_SCHEMAS``, the JSON schemas of a command-taking read model's commands' data.

The read model that decides an aggregate's commands declares what each
command's ``data`` looks like; the catalog checks the declaration and keeps a
read-only copy on the ReadModel (``command_schemas``), which the OpenAPI
document shows (tests/unit/web/test_openapi.py).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from projector.core.catalog import ReadModel, load_catalog, read_model_from_module
from projector.core.errors import ReadModelError

TABLES_DIR = Path(__file__).resolve().parents[3] / "tables"

pytestmark = pytest.mark.usefixtures("clean_table_modules")

SHIP = {"type": "object", "required": ["weight"], "properties": {"weight": {"type": "integer", "minimum": 1}}}


def module(**attrs: Any) -> types.ModuleType:
    """A parcel aggregate's read model that takes ``Ship`` and ``Cancel``, with ``attrs`` set or replaced."""
    m = types.ModuleType("rm_commands_mod")
    m.NAME = "parcels"
    m.HANDLES = ("ParcelShipped",)
    m.fold = lambda state, event: {"shipped": True}
    m.AGGREGATE_TYPE = "parcel"
    m.decide = lambda state, command, settings: []
    m.COMMANDS = ("Ship", "Cancel")
    for k, v in attrs.items():
        if v is None:
            delattr(m, k)
        else:
            setattr(m, k, v)
    return m


def error(**attrs: Any) -> str:
    with pytest.raises(ReadModelError) as info:
        read_model_from_module(module(**attrs), "parcels.py")
    return str(info.value)


# --- what is kept -------------------------------------------------------------------


def test_the_schemas_are_kept_by_command_type():
    model = read_model_from_module(module(COMMAND_SCHEMAS={"Ship": SHIP}))
    assert dict(model.command_schemas) == {"Ship": SHIP}
    assert model.commands == ("Ship", "Cancel")  # Cancel declares none: any object


def test_no_declaration_is_no_schemas():
    assert dict(read_model_from_module(module()).command_schemas) == {}


def test_the_kept_schemas_are_a_read_only_copy():
    declared = {"Ship": {**SHIP, "properties": dict(SHIP["properties"])}}
    model = read_model_from_module(module(COMMAND_SCHEMAS=declared))
    declared["Ship"]["properties"]["weight"] = {"type": "string"}
    assert model.command_schemas["Ship"] == SHIP, "changing the module's dict later changes nothing"
    with pytest.raises(TypeError):
        model.command_schemas["Cancel"] = {}  # type: ignore[index]
    hash(model)  # a ReadModel stays hashable


def test_the_repository_accounts_declare_their_commands_from_their_own_limits():
    catalog = load_catalog(TABLES_DIR)
    accounts: ReadModel = catalog.deciders["account"]
    assert set(accounts.command_schemas) == set(accounts.commands)
    max_amount = accounts.module.MAX_AMOUNT
    for kind in ("Deposit", "Withdraw"):
        assert accounts.command_schemas[kind]["properties"]["amount"]["maximum"] == max_amount
    assert accounts.command_schemas["OpenAccount"]["required"] == ["owner", "currency"]


# --- what is refused ----------------------------------------------------------------


def test_a_schema_for_a_command_not_in_commands_is_refused():
    message = error(COMMAND_SCHEMAS={"Ship": SHIP, "Teleport": SHIP})
    assert "parcels.py" in message and "['Teleport']" in message and "Ship, Cancel" in message


def test_schemas_need_commands():
    message = error(COMMANDS=None, COMMAND_SCHEMAS={"Ship": SHIP})
    assert "COMMAND_SCHEMAS needs COMMANDS" in message


def test_schemas_need_an_aggregate_that_takes_commands():
    message = error(AGGREGATE_TYPE=None, decide=None, COMMANDS=None, COMMAND_SCHEMAS={"Ship": SHIP})
    assert "COMMAND_SCHEMAS is for an aggregate that takes commands" in message


@pytest.mark.parametrize("declared", [[("Ship", SHIP)], "Ship", frozenset({"Ship"})])
def test_schemas_must_be_a_dict(declared):
    assert "COMMAND_SCHEMAS must be a dict" in error(COMMAND_SCHEMAS=declared)


@pytest.mark.parametrize("schema", [["weight"], "object", True, None.__class__])
def test_each_schema_must_be_a_dict(schema):
    message = error(COMMAND_SCHEMAS={"Ship": schema})
    assert "COMMAND_SCHEMAS['Ship'] must be a dict" in message


def test_a_schema_describes_an_object():
    message = error(COMMAND_SCHEMAS={"Ship": {"type": "string"}})
    assert "COMMAND_SCHEMAS['Ship']" in message and "'object'" in message and "'string'" in message


def test_a_schema_must_be_plain_json():
    message = error(COMMAND_SCHEMAS={"Ship": {"type": "object", "enum": {1, 2}}})
    assert "COMMAND_SCHEMAS['Ship'] must be plain JSON" in message
