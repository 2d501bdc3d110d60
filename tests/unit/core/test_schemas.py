"""projector.core.schemas: upcaster chains checked at construction, and upcasting (CONTRACT §2 schema_version)."""

from __future__ import annotations

import types

import pytest
from factories import event

from projector.core.envelope import INVALID_ENVELOPE
from projector.core.errors import InvalidRecord, SchemaError
from projector.core.schemas import Schemas


def v1_to_v2(data):
    return {"amount": {"cents": data["amount"]}}


def v2_to_v3(data):
    return {"amount": {**data["amount"], "currency": "EUR"}}


def dep(schema_version: int = 1, data=None, version: int = 2):
    return event("acc-1", version, "MoneyDeposited", data if data is not None else {"amount": 5},
                 schema_version=schema_version)


# --- construction checks ------------------------------------------------------------------


def test_empty_schemas_are_fine_and_leave_events_alone():
    s = Schemas()
    ev = dep()
    assert s.upcast(ev) is ev
    assert (s.current, s.upcasters) == ({}, {})


def test_complete_chain_is_accepted():
    s = Schemas({"MoneyDeposited": 3}, {("MoneyDeposited", 1): v1_to_v2, ("MoneyDeposited", 2): v2_to_v3})
    assert s.current == {"MoneyDeposited": 3}


def test_missing_upcaster_is_refused_and_named():
    with pytest.raises(SchemaError) as info:
        Schemas({"MoneyDeposited": 3}, {("MoneyDeposited", 1): v1_to_v2})
    msg = str(info.value)
    assert "MoneyDeposited" in msg
    assert "[2]" in msg


def test_type_above_one_without_any_upcaster_is_refused():
    with pytest.raises(SchemaError) as info:
        Schemas({"MoneyDeposited": 2})
    assert "[1]" in str(info.value)


@pytest.mark.parametrize("version", [2, 3])
def test_upcaster_at_or_past_the_current_version_is_refused(version):
    ups = {("MoneyDeposited", 1): v1_to_v2, ("MoneyDeposited", version): v2_to_v3}
    with pytest.raises(SchemaError) as info:
        Schemas({"MoneyDeposited": 2}, ups)
    assert "past the current schema version 2" in str(info.value)


def test_upcaster_for_a_type_at_version_one_is_refused():
    with pytest.raises(SchemaError) as info:
        Schemas({}, {("AccountOpened", 1): lambda d: d})
    assert "AccountOpened" in str(info.value)
    assert "SCHEMA_VERSIONS['AccountOpened'] = 2" in str(info.value)


@pytest.mark.parametrize("bad", ["2", 2.0, 0, -1, True, None])
def test_current_version_must_be_an_integer_of_at_least_one(bad):
    with pytest.raises(SchemaError) as info:
        Schemas({"MoneyDeposited": bad}, {})
    assert "must be an integer >= 1" in str(info.value)


def test_upcaster_must_be_callable():
    with pytest.raises(SchemaError) as info:
        Schemas({"MoneyDeposited": 2}, {("MoneyDeposited", 1): "not a function"})
    assert "not a function" in str(info.value)


def test_upcaster_keyed_by_a_string_version_without_the_int_one_is_refused():
    with pytest.raises(SchemaError):
        Schemas({"MoneyDeposited": 2}, {("MoneyDeposited", "1"): v1_to_v2})


@pytest.mark.parametrize("bad", ["x", 1.5, 0])
def test_upcaster_keyed_by_a_non_int_or_below_one_version_is_a_schema_error(bad):
    with pytest.raises(SchemaError):
        Schemas({"MoneyDeposited": 2}, {("MoneyDeposited", 1): v1_to_v2, ("MoneyDeposited", bad): v1_to_v2})


# --- from_modules ------------------------------------------------------------------------


def module(name: str, **attrs):
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def test_from_modules_merges_every_module():
    a = module("a", SCHEMA_VERSIONS={"MoneyDeposited": 2})
    b = module("b", UPCASTERS={("MoneyDeposited", 1): v1_to_v2})
    c = module("c")
    s = Schemas.from_modules([a, b, c])
    assert s.current == {"MoneyDeposited": 2}
    assert s.upcasters == {("MoneyDeposited", 1): v1_to_v2}


def test_from_modules_checks_the_merged_chains():
    with pytest.raises(SchemaError):
        Schemas.from_modules([module("a", SCHEMA_VERSIONS={"MoneyDeposited": 2})])


def test_from_modules_refuses_two_current_versions_of_one_type():
    a = module("a", SCHEMA_VERSIONS={"MoneyDeposited": 2}, UPCASTERS={("MoneyDeposited", 1): v1_to_v2})
    b = module("b", SCHEMA_VERSIONS={"MoneyDeposited": 3})
    with pytest.raises(SchemaError) as info:
        Schemas.from_modules([a, b])
    assert "MoneyDeposited" in str(info.value)


def test_from_modules_refuses_two_upcasters_for_one_step_but_not_the_same_one_twice():
    a = module("a", SCHEMA_VERSIONS={"MoneyDeposited": 2}, UPCASTERS={("MoneyDeposited", 1): v1_to_v2})
    same = module("b", UPCASTERS={("MoneyDeposited", 1): v1_to_v2})
    other = module("c", UPCASTERS={("MoneyDeposited", 1): lambda d: d})
    assert Schemas.from_modules([a, same]).upcasters == {("MoneyDeposited", 1): v1_to_v2}
    with pytest.raises(SchemaError) as info:
        Schemas.from_modules([a, other])
    assert "second upcaster" in str(info.value)


# --- upcast -----------------------------------------------------------------------------------


CHAIN = Schemas({"MoneyDeposited": 3}, {("MoneyDeposited", 1): v1_to_v2, ("MoneyDeposited", 2): v2_to_v3})


def test_upcast_applies_the_whole_chain_from_version_one():
    ev = dep(1, {"amount": 5})
    up = CHAIN.upcast(ev)
    assert up.data == {"amount": {"cents": 5, "currency": "EUR"}}
    assert up.schema_version == 3
    assert (up.id, up.version, up.type, up.aggregate_id) == (ev.id, ev.version, ev.type, ev.aggregate_id)
    assert ev.data == {"amount": 5} and ev.schema_version == 1, "the original event is left alone"


def test_upcast_starts_the_chain_at_the_event_schema_version():
    up = CHAIN.upcast(dep(2, {"amount": {"cents": 7}}))
    assert up.data == {"amount": {"cents": 7, "currency": "EUR"}}
    assert up.schema_version == 3


def test_event_at_the_current_version_is_returned_as_is():
    ev = dep(3, {"amount": {"cents": 7, "currency": "CHF"}})
    assert CHAIN.upcast(ev) is ev


def test_types_without_a_declared_version_are_at_one():
    ev = event("acc-1", 1, "AccountOpened", schema_version=1)
    assert CHAIN.upcast(ev) is ev
    with pytest.raises(InvalidRecord) as info:
        CHAIN.upcast(event("acc-1", 1, "AccountOpened", schema_version=2))
    assert info.value.reason == INVALID_ENVELOPE


def test_schema_version_newer_than_current_is_invalid_envelope():
    with pytest.raises(InvalidRecord) as info:
        CHAIN.upcast(dep(4, {"amount": 1}))
    assert info.value.reason == "invalid_envelope"
    assert "newer than the current 3" in info.value.message


def test_upcaster_that_raises_is_invalid_envelope():
    with pytest.raises(InvalidRecord) as info:
        CHAIN.upcast(dep(1, {"wrong": 1}))  # v1_to_v2 reads data["amount"]
    err = info.value
    assert err.reason == "invalid_envelope"
    assert "KeyError" in err.message
    assert "schema version 1" in err.message
    assert isinstance(err.__cause__, KeyError)


def test_upcaster_failing_later_in_the_chain_names_its_step():
    s = Schemas({"T": 3}, {("T", 1): lambda d: {**d, "one": True}, ("T", 2): lambda d: 1 / 0})
    with pytest.raises(InvalidRecord) as info:
        s.upcast(event("acc-1", 1, "T", {}, schema_version=1))
    assert info.value.reason == "invalid_envelope"
    assert "schema version 2" in info.value.message
    assert "ZeroDivisionError" in info.value.message


@pytest.mark.parametrize("result", [None, [1], "x"])
def test_upcaster_that_does_not_return_an_object_is_invalid_envelope(result):
    s = Schemas({"T": 2}, {("T", 1): lambda d: result})
    with pytest.raises(InvalidRecord) as info:
        s.upcast(event("acc-1", 1, "T", {}))
    assert info.value.reason == "invalid_envelope"
    assert "did not return an object" in info.value.message
