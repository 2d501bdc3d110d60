"""projector.core.catalog: the control settings a tables/ module declares (``CONTROL``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from projector.core.catalog import ControlSetting, load_catalog
from projector.core.control import ControlState
from projector.core.errors import ReadModelError

pytestmark = pytest.mark.usefixtures("clean_table_modules")

MODEL = """
NAME = "{name}"
HANDLES = ("Happened",)

def fold(state, event):
    return (state or 0) + 1
"""


def folder_with(tmp_path: Path, control: str, name: str = "m") -> Path:
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(MODEL.format(name=name)) + "\nCONTROL = " + control + "\n")
    return folder


def test_a_declared_setting_is_read_with_its_type_default_and_description(tmp_path):
    catalog = load_catalog(folder_with(tmp_path, '{"m.limit": {"type": "integer", "minimum": 1, "default": 10, '
                                                 '"description": "at most this many"}}'))
    assert catalog.control_settings == {"m.limit": ControlSetting("m.limit", "integer", 10, "at most this many", 1)}


def test_the_value_in_force_is_the_valid_entry_else_the_default():
    setting = ControlSetting("m.limit", "integer", 10, minimum=1)
    assert setting.value({}) == 10
    assert setting.value({"m.limit": 3}) == 3
    for bad in (0, -3, 2.5, True, "3", [3]):
        assert setting.value({"m.limit": bad}) == 10, bad
        assert setting.problem(bad) == "must be an integer >= 1"


def test_a_number_setting_takes_ints_and_floats_but_not_booleans():
    setting = ControlSetting("m.rate", "number")
    assert setting.problem(1) is None and setting.problem(0.5) is None
    assert setting.problem(True) == "must be a number, or null for none"


def test_each_type_has_its_json_schema():
    assert ControlSetting("k", "integer", None, "d", 0).schema == {"type": ["integer", "null"], "description": "d",
                                                                    "minimum": 0}
    assert ControlSetting("k", "boolean", True, "d").schema == {"type": ["boolean", "null"], "description": "d",
                                                               "default": True}


@pytest.mark.parametrize("control, message", [
    ('[1]', "CONTROL must be a dict"),
    ('{"k": 1}', "must map a non-empty key to a dict"),
    ('{"k": {"type": "date"}}', "type must be one of boolean, integer"),
    ('{"k": {"type": "integer", "max": 3}}', "unknown fields ['max']"),
    ('{"k": {"type": "string", "minimum": 3}}', "minimum is for integer and number settings"),
    ('{"k": {"type": "integer", "default": "ten"}}', "default must be an integer, got 'ten'"),
    ('{"k": {"type": "integer", "description": 3}}', "description must be a string"),
])
def test_a_bad_declaration_names_the_module_and_what_is_wrong(tmp_path, control, message):
    with pytest.raises(ReadModelError) as info:
        load_catalog(folder_with(tmp_path, control))
    assert "m.py" in str(info.value) and message in str(info.value)


def test_two_modules_cannot_declare_the_same_key(tmp_path):
    folder = folder_with(tmp_path, '{"k": {"type": "integer"}}', name="a")
    (folder / "b.py").write_text(textwrap.dedent(MODEL.format(name="b")) + '\nCONTROL = {"k": {"type": "string"}}\n')
    with pytest.raises(ReadModelError, match="CONTROL key 'k' is already declared by .*a.py"):
        load_catalog(folder)


def test_a_module_of_settings_only_is_loaded(tmp_path):
    folder = folder_with(tmp_path, "{}")
    (folder / "settings_only.py").write_text('CONTROL = {"x.on": {"type": "boolean", "default": False}}\n')
    assert set(load_catalog(folder).control_settings) == {"x.on"}


def test_the_control_table_checks_what_the_catalog_declares(tmp_path):
    catalog = load_catalog(folder_with(tmp_path, '{"m.name": {"type": "string"}}'))
    state = ControlState(catalog.control_settings)
    state.apply(b"m.name", b"7", 0)
    assert state.invalid == {"invalid_setting": 1}
    assert state.setting("m.name") is None
    state.apply(b"m.name", b'"seven"', 1)
    assert state.setting("m.name") == "seven"


def test_a_module_cannot_declare_projectors_own_setting(tmp_path):
    with pytest.raises(ReadModelError) as info:
        load_catalog(folder_with(tmp_path, '{"commands.enabled": {"type": "boolean"}}'))
    assert "m.py" in str(info.value) and "['commands.enabled'] belong to projector" in str(info.value)
