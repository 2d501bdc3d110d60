"""Folds that take the control table: ``fold(state, event, control)`` (CONTRACT §3).

read_model_from_module tells a 3-argument fold from a 2-argument one, apply_record
hands the control view only to the former, and the Engine passes the view it was
built with: a ControlState's live ``entries``.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Mapping

import pytest
from enginekit import DEADLETTER, Driver, env, headers
from factories import deposit

from projector.core.catalog import Catalog, ReadModel, read_model_from_module
from projector.core.control import ControlState
from projector.core.engine import HEADER_REASON, Engine
from projector.core.errors import InvalidRecord, ReadModelError
from projector.core.fold import FOLD_ERROR, NO_CONTROL, apply_record


def module(fold: Callable, name: str = "rm_ctl_mod", **attrs: Any) -> types.ModuleType:
    m = types.ModuleType(name)
    m.NAME = attrs.pop("NAME", "capped")
    m.DESCRIPTION = attrs.pop("DESCRIPTION", "deposits, capped by control cap")
    m.HANDLES = attrs.pop("HANDLES", ("MoneyDeposited",))
    m.fold = fold
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def capped_fold(state, event, control):
    """Adds each deposit, at most control["cap"] of it (no cap: all of it)."""
    amount = event.data["amount"]
    cap = control.get("cap")
    if cap is not None:
        amount = min(amount, cap)
    return (state or 0) + amount


def plain_fold(state, event):
    return (state or 0) + event.data["amount"]


# --- read_model_from_module: which folds take control -----------------------------------------


def test_a_three_argument_fold_takes_control():
    model = read_model_from_module(module(capped_fold))
    assert isinstance(model, ReadModel)
    assert model.takes_control is True
    assert model.fold is capped_fold
    assert model.handles == frozenset({"MoneyDeposited"})


def test_a_two_argument_fold_does_not_take_control():
    assert read_model_from_module(module(plain_fold)).takes_control is False


def test_a_fold_with_an_optional_control_takes_control():
    def fold(state, event, control=None):
        return state

    assert read_model_from_module(module(fold)).takes_control is True


def test_a_lambda_and_a_callable_object_are_told_apart_too():
    class Folder:
        def __call__(self, state, event, control):
            return state

    assert read_model_from_module(module(lambda s, e: s)).takes_control is False
    assert read_model_from_module(module(lambda s, e, control: s)).takes_control is True
    assert read_model_from_module(module(Folder())).takes_control is True


def test_only_a_third_parameter_named_control_gets_the_control_table():
    def cached(state, event, _cache={}):  # an optional third parameter of its own
        return state

    assert read_model_from_module(module(cached)).takes_control is False
    with pytest.raises(ReadModelError, match="s, e, c"):
        read_model_from_module(module(lambda s, e, c: s))


def test_var_positional_folds_are_called_with_two_arguments():
    calls: list[tuple] = []

    def fold(*args):
        calls.append(args)
        return (args[0] or 0) + 1

    def fold_with_rest(state, event, *rest):
        calls.append((state, event, *rest))
        return (state or 0) + 1

    for f in (fold, fold_with_rest):
        calls.clear()
        model = read_model_from_module(module(f))
        assert model.takes_control is False
        result = apply_record(model, None, [deposit("acc-1", 1, 5)], {"cap": 1})
        assert result.row == {"version": 1, "value": 1}
        assert len(calls) == 1
        assert len(calls[0]) == 2
        assert calls[0][1].aggregate_id == "acc-1"


@pytest.mark.parametrize(
    "fold, count",
    [
        (lambda state: state, 1),
        (lambda state, event, control, extra: state, 4),
        (lambda: None, 0),
    ],
    ids=["one", "four", "none"],
)
def test_a_fold_with_another_number_of_positional_parameters_is_refused(fold, count):
    with pytest.raises(ReadModelError) as info:
        read_model_from_module(module(fold, name="bad_fold_module"))
    message = str(info.value)
    assert message.startswith("bad_fold_module: ")
    assert "(state, event) or (state, event, control)" in message
    assert f"got {count} positional parameters" in message


def test_the_refusal_names_the_origin_when_given():
    with pytest.raises(ReadModelError, match=r"^tables/odd\.py: fold must take"):
        read_model_from_module(module(lambda a, b, c, d: a), origin="tables/odd.py")


def test_keyword_only_parameters_do_not_count_as_control():
    def fold(state, event, *, verbose=False):
        return (state or 0) + 1

    model = read_model_from_module(module(fold))
    assert model.takes_control is False
    assert apply_record(model, None, [deposit("acc-1", 1, 5)], {"x": 1}).row == {"version": 1, "value": 1}


def test_a_required_keyword_only_control_is_refused_at_load():
    def fold(state, event, *, control):
        return state

    with pytest.raises(ReadModelError, match="keyword-only"):
        read_model_from_module(module(fold))


def test_folds_with_defaults_take_the_arity_they_can():
    def two(state, event=None):
        return state

    def three(state=None, event=None, control=None):
        return state

    assert read_model_from_module(module(two)).takes_control is False
    assert read_model_from_module(module(three)).takes_control is True


# --- apply_record: what the fold gets --------------------------------------------------------------


def test_apply_record_passes_the_control_mapping_to_a_three_argument_fold():
    model = read_model_from_module(module(capped_fold))
    result = apply_record(model, None, [deposit("acc-1", 1, 500)], {"cap": 100})
    assert result.row == {"version": 1, "value": 100}
    result = apply_record(model, result.row, [deposit("acc-1", 2, 30), deposit("acc-1", 3, 300)], {"cap": 100})
    assert result.row == {"version": 3, "value": 230}
    assert result.applied == 2


def test_apply_record_passes_the_same_mapping_object():
    seen: list[Mapping] = []

    def fold(state, event, control):
        seen.append(control)
        return state

    control = {"k": [1, 2]}
    apply_record(read_model_from_module(module(fold)), None, [deposit("acc-1", 1, 5)], control)
    assert len(seen) == 1
    assert seen[0] is control


def test_the_default_control_is_an_empty_read_only_mapping():
    seen: list[Mapping] = []

    def fold(state, event, control):
        seen.append(control)
        return capped_fold(state, event, control)

    model = read_model_from_module(module(fold))
    result = apply_record(model, None, [deposit("acc-1", 1, 500)])
    assert result.row == {"version": 1, "value": 500}  # no cap
    [control] = seen
    assert control is NO_CONTROL
    assert dict(control) == {}
    with pytest.raises(TypeError):
        control["cap"] = 1  # type: ignore[index]
    assert len(NO_CONTROL) == 0


def test_a_two_argument_fold_gets_no_control():
    model = read_model_from_module(module(plain_fold))
    result = apply_record(model, None, [deposit("acc-1", 1, 500)], {"cap": 100})
    assert result.row == {"version": 1, "value": 500}


def test_a_fold_that_writes_into_the_control_view_is_a_fold_error():
    state = ControlState()
    state.apply(b"cap", b"10", 0)

    def fold(state_, event, control):
        control["cap"] = 1_000_000  # type: ignore[index]
        return state_

    model = read_model_from_module(module(fold))
    with pytest.raises(InvalidRecord) as info:
        apply_record(model, None, [deposit("acc-1", 1, 5)], state.entries)
    assert info.value.reason == FOLD_ERROR
    assert "TypeError" in info.value.message
    assert dict(state.entries) == {"cap": 10}


def test_a_fold_sees_control_entries_live_from_a_control_state():
    state = ControlState()
    model = read_model_from_module(module(capped_fold))
    row = apply_record(model, None, [deposit("acc-1", 1, 500)], state.entries).row
    assert row == {"version": 1, "value": 500}
    state.apply(b"cap", b"100", 0)
    row = apply_record(model, row, [deposit("acc-1", 2, 500)], state.entries).row
    assert row == {"version": 2, "value": 600}
    state.apply(b"cap", None, 1)
    row = apply_record(model, row, [deposit("acc-1", 3, 500)], state.entries).row
    assert row == {"version": 3, "value": 1100}


# --- through the Engine ---------------------------------------------------------------------------------


def control_driver(mod: types.ModuleType, control: Mapping[str, Any] | None) -> Driver:
    """A Driver over a one-model catalog, its Engine built with ``control=`` (or the default when None)."""
    catalog = Catalog(models=[read_model_from_module(mod)], derived=[], modules=[mod])
    d = Driver(catalog=catalog, repartition_topics={})
    if control is not None:
        d.engine = Engine(
            catalog,
            d.store,
            partitions=d.engine.partitions,
            deadletter_topic=DEADLETTER,
            repartition_topics={},
            control=control,
        )
    return d


def deposit_record(d: Driver, aid: str, version: int, amount: Any):
    return d.record(env(aid, version, "MoneyDeposited", {"amount": amount}))


def test_the_engine_hands_its_control_view_to_folds():
    state = ControlState()
    state.apply(b"cap", b"100", 0)
    d = control_driver(module(capped_fold), state.entries)
    assert d.engine.control is state.entries
    d.run([deposit_record(d, "acc-1", 1, 500)])
    assert d.row("capped", "acc-1") == {"version": 1, "value": 100}
    assert d.deadletters == []


def test_the_engine_sees_later_control_changes_without_being_rebuilt():
    state = ControlState()
    state.apply(b"cap", b"100", 0)
    d = control_driver(module(capped_fold), state.entries)
    engine = d.engine
    d.run([deposit_record(d, "acc-1", 1, 500)])
    state.apply(b"cap", b"1000", 1)
    d.run([deposit_record(d, "acc-1", 2, 500)])
    state.apply(b"cap", None, 2)
    d.run([deposit_record(d, "acc-1", 3, 5000), deposit_record(d, "acc-2", 1, 7)])
    assert d.engine is engine
    assert d.row("capped", "acc-1") == {"version": 3, "value": 100 + 500 + 5000}
    assert d.row("capped", "acc-2") == {"version": 1, "value": 7}


def test_an_engine_without_control_gives_folds_the_empty_view():
    d = control_driver(module(capped_fold), None)
    assert d.engine.control is NO_CONTROL
    d.run([deposit_record(d, "acc-1", 1, 500)])
    assert d.row("capped", "acc-1") == {"version": 1, "value": 500}


def test_a_fold_failing_on_a_control_value_dead_letters_the_record():
    state = ControlState()
    state.apply(b"cap", b'"lots"', 0)  # min(500, "lots") raises TypeError
    d = control_driver(module(capped_fold), state.entries)
    d.run([deposit_record(d, "acc-1", 1, 500)])
    assert d.row("capped", "acc-1") is None
    assert [headers(s)[HEADER_REASON] for s in d.deadletters] == [FOLD_ERROR]
    state.apply(b"cap", b"50", 1)
    d.run([deposit_record(d, "acc-1", 1, 500)])  # the aggregate did not advance: v1 is still next
    assert d.row("capped", "acc-1") == {"version": 1, "value": 50}


def test_control_and_plain_folds_side_by_side():
    state = ControlState()
    state.apply(b"cap", b"10", 0)
    ctl = module(capped_fold, name="ctl_mod", NAME="capped")
    plain = module(plain_fold, name="plain_mod", NAME="uncapped")
    catalog = Catalog(
        models=[read_model_from_module(ctl), read_model_from_module(plain)], derived=[], modules=[ctl, plain]
    )
    d = Driver(catalog=catalog, repartition_topics={})
    d.engine = Engine(catalog, d.store, partitions=d.engine.partitions, deadletter_topic=DEADLETTER,
                      repartition_topics={}, control=state.entries)
    d.run([deposit_record(d, "acc-1", 1, 25), deposit_record(d, "acc-1", 2, 5)])
    assert d.row("capped", "acc-1") == {"version": 2, "value": 15}
    assert d.row("uncapped", "acc-1") == {"version": 2, "value": 30}
