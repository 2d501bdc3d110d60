"""projector.core.fold.apply_record: handled events only, row-version duplicates, all-or-nothing.

Gaps are no longer apply_record's business: the aggregate index
(:func:`projector.core.index.admit`, see test_aggregates.py) decides which
events are new and in order. apply_record folds the events its model HANDLES
and skips those at or below the row's version.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from factories import closed, deposit, event, opened, withdrawal

import projector.core.fold as projection
from projector.core.catalog import ReadModel
from projector.core.errors import InvalidRecord
from projector.core.fold import FOLD_ERROR, Applied, apply_record


def _sum_fold(state: dict[str, Any], ev) -> dict[str, Any]:
    if ev.data.get("boom"):
        raise RuntimeError("boom")
    return {"total": state["total"] + ev.data["n"], "seen": [*state["seen"], ev.version]}


SUMS = ReadModel(
    name="sums",
    description="sums data.n over Added events",
    handles=frozenset({"Added"}),
    fold=_sum_fold,
    initial={"total": 0, "seen": []},
)


def added(version: int, n: int = 1, aggregate_id: str = "agg", **data: Any):
    return event(aggregate_id, version, "Added", {"n": n, **data})


def row(version: int, total: int, seen: list[int]) -> dict[str, Any]:
    return {"version": version, "value": {"total": total, "seen": seen}}


# --- the plain path -----------------------------------------------------------


def test_first_event_starts_from_the_initial_state():
    result = apply_record(SUMS, None, [added(1, 5)])
    assert result.row == row(1, 5, [1])
    assert (result.applied, result.duplicates, result.changed) == (1, 0, True)


def test_next_version_is_applied_to_the_row():
    before = row(2, 10, [1, 2])
    result = apply_record(SUMS, before, [added(3, 4)])
    assert result.row == row(3, 14, [1, 2, 3])
    assert before == row(2, 10, [1, 2])


def test_composite_is_applied_whole():
    result = apply_record(SUMS, row(1, 1, [1]), [added(2, 2), added(3, 3), added(4, 4)])
    assert result.row == row(4, 10, [1, 2, 3, 4])
    assert (result.applied, result.duplicates) == (3, 0)


# --- duplicates -----------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_event_at_or_below_the_row_version_is_a_skipped_duplicate(version):
    before = row(3, 6, [1, 2, 3])
    snapshot = copy.deepcopy(before)
    result = apply_record(SUMS, before, [added(version, 100)])
    assert (result.applied, result.duplicates, result.changed) == (0, 1, False)
    assert result.row is before
    assert before == snapshot


def test_duplicate_composite_counts_every_element():
    before = row(3, 6, [1, 2, 3])
    result = apply_record(SUMS, before, [added(1), added(2), added(3)])
    assert (result.applied, result.duplicates) == (0, 3)
    assert result.row is before


def test_partially_duplicate_composite_applies_only_the_new_elements():
    result = apply_record(SUMS, row(3, 6, [1, 2, 3]), [added(2, 50), added(3, 50), added(4, 4), added(5, 5)])
    assert result.row == row(5, 15, [1, 2, 3, 4, 5])
    assert (result.applied, result.duplicates) == (2, 2)


def test_duplicate_is_skipped_even_when_its_fold_would_raise():
    before = row(2, 3, [1, 2])
    result = apply_record(SUMS, before, [added(2, boom=True)])
    assert (result.applied, result.duplicates) == (0, 1)
    assert result.row is before


def test_without_a_row_version_one_is_new():
    result = apply_record(SUMS, None, [added(1)])
    assert (result.applied, result.duplicates) == (1, 0)


# --- versions past the row's: no gap check here -------------------------------------------


def test_projection_no_longer_defines_a_version_gap_reason():
    assert not hasattr(projection, "VERSION_GAP")


@pytest.mark.parametrize("version", [5, 6, 100])
def test_handled_event_past_the_next_version_is_applied(version):
    # The row lags the aggregate whenever unhandled events came in between; the
    # index has already checked the aggregate's order, so apply_record folds it.
    before = row(3, 6, [1, 2, 3])
    snapshot = copy.deepcopy(before)
    result = apply_record(SUMS, before, [added(version, 4)])
    assert result.row == row(version, 10, [1, 2, 3, version])
    assert (result.applied, result.duplicates) == (1, 0)
    assert before == snapshot


def test_first_handled_event_of_a_new_row_may_have_any_version():
    result = apply_record(SUMS, None, [added(2, 7)])
    assert result.row == row(2, 7, [2])


def test_composite_with_a_duplicate_then_a_later_event_applies_the_later_one():
    result = apply_record(SUMS, row(2, 3, [1, 2]), [added(2, 100), added(4, 4)])
    assert result.row == row(4, 7, [1, 2, 4])
    assert (result.applied, result.duplicates) == (1, 1)


# --- fold errors --------------------------------------------------------------------


def test_fold_that_raises_is_a_fold_error_naming_model_event_and_exception():
    with pytest.raises(InvalidRecord) as info:
        apply_record(SUMS, row(1, 1, [1]), [added(2, boom=True)])
    err = info.value
    assert err.reason == FOLD_ERROR
    for part in ("sums", "Added", "v2", "agg", "RuntimeError", "boom"):
        assert part in err.message
    assert isinstance(err.__cause__, RuntimeError)


def test_fold_error_in_the_second_element_leaves_the_row_unchanged():
    before = row(1, 1, [1])
    snapshot = copy.deepcopy(before)
    with pytest.raises(InvalidRecord) as info:
        apply_record(SUMS, before, [added(2, 10), added(3, boom=True), added(4, 10)])
    assert info.value.reason == FOLD_ERROR
    assert before == snapshot


def test_accounts_fold_error_in_second_element_leaves_the_row_unchanged(accounts):
    first = apply_record(accounts, None, [opened("acc-1"), deposit("acc-1", 2, 100)]).row
    snapshot = copy.deepcopy(first)
    with pytest.raises(InvalidRecord) as info:
        # element 2 is fine, element 3 opens the account a second time
        apply_record(accounts, first, [deposit("acc-1", 3, 5), event("acc-1", 4, "AccountOpened")])
    assert info.value.reason == FOLD_ERROR
    assert first == snapshot
    assert first["value"]["balance"] == 100


def _mutating_fold(state: dict[str, Any], ev) -> dict[str, Any]:
    if ev.data.get("boom"):
        raise RuntimeError("boom")
    state["total"] += ev.data["n"]  # in place, as much Python code would write it
    return state


MUTATING = ReadModel(
    name="mutating",
    description="a fold that updates its state in place",
    handles=frozenset({"Added"}),
    fold=_mutating_fold,
    initial={"total": 0},
)


def test_fold_error_leaves_the_row_unchanged_even_for_an_in_place_fold():
    before = {"version": 1, "value": {"total": 1}}
    with pytest.raises(InvalidRecord):
        apply_record(MUTATING, before, [added(2, 10), added(3, boom=True)])
    assert before == {"version": 1, "value": {"total": 1}}


def test_initial_state_is_copied_for_each_new_row():
    # Even a fold that updates its state in place must never change the model's INITIAL.
    first = apply_record(MUTATING, None, [added(1, 5)])
    second = apply_record(MUTATING, None, [added(1, 2, aggregate_id="other")])
    assert MUTATING.initial == {"total": 0}
    assert first.row == {"version": 1, "value": {"total": 5}}
    assert second.row == {"version": 1, "value": {"total": 2}}


# --- unhandled event types -------------------------------------------------------------


def test_unhandled_event_type_neither_advances_nor_changes_the_row():
    before = row(2, 3, [1, 2])
    snapshot = copy.deepcopy(before)
    result = apply_record(SUMS, before, [event("agg", 3, "Renamed", {"n": 1000})])
    assert result.row is before
    assert before == snapshot
    assert (result.applied, result.duplicates, result.changed) == (0, 0, False)


def test_unhandled_first_event_creates_no_row():
    result = apply_record(SUMS, None, [event("agg", 1, "Created", {})])
    assert result.row is None
    assert (result.applied, result.duplicates, result.changed) == (0, 0, False)


def test_unhandled_event_at_or_below_the_row_version_is_not_counted_as_a_duplicate():
    result = apply_record(SUMS, row(3, 6, [1, 2, 3]), [event("agg", 2, "Noise", {})])
    assert (result.applied, result.duplicates, result.changed) == (0, 0, False)


def test_composite_mixing_handled_and_unhandled_types():
    result = apply_record(SUMS, None, [added(1, 1), event("agg", 2, "Noise", {}), added(3, 2)])
    assert result.row == row(3, 3, [1, 3])
    assert result.applied == 2


def test_composite_ending_with_an_unhandled_event_leaves_the_row_at_the_last_handled_version():
    result = apply_record(SUMS, row(1, 1, [1]), [added(2, 2), event("agg", 3, "Noise", {})])
    assert result.row == row(2, 3, [1, 2])
    assert result.applied == 1


def _strict_fold(state, ev):
    if ev.type != "Added":
        raise AssertionError(f"fold called with unhandled {ev.type}")
    return _sum_fold(state, ev)


STRICT = ReadModel(
    name="strict", description="raises on any type it does not handle", handles=frozenset({"Added"}),
    fold=_strict_fold, initial={"total": 0, "seen": []},
)


def test_fold_is_never_called_with_an_unhandled_type():
    result = apply_record(STRICT, None, [added(1, 1), event("agg", 2, "Noise", {}), added(3, 2)])
    assert result.row == row(3, 3, [1, 3])


def test_accounts_ignores_types_it_does_not_handle(accounts):
    start = apply_record(accounts, None, [opened("acc-1"), deposit("acc-1", 2, 70)]).row
    result = apply_record(accounts, start, [event("acc-1", 3, "OwnerRenamed", {"owner": "zed"})])
    assert result.row is start
    assert result.row == {"version": 2, "value": start["value"]}
    assert not result.changed


# --- the accounts model through apply_record ------------------------------------------


def test_accounts_full_history_through_apply_record(accounts):
    history = [opened("acc-7", "bob", "USD"), deposit("acc-7", 2, 500), withdrawal("acc-7", 3, 200),
               withdrawal("acc-7", 4, 300), closed("acc-7", 5)]
    current = None
    for ev in history:
        current = apply_record(accounts, current, [ev]).row
    assert current == {
        "version": 5,
        "value": {"owner": "bob", "currency": "USD", "balance": 0, "status": "closed",
                  "deposits": 1, "withdrawals": 2},
    }
    assert apply_record(accounts, None, history).row == current


def test_record_rejected_carries_reason_and_message():
    err = InvalidRecord(FOLD_ERROR, "boom")
    assert (err.reason, err.message, str(err)) == ("fold_error", "boom", "boom")


def test_applied_changed_follows_applied_count():
    assert Applied(row=None).changed is False
    assert Applied(row=None, applied=1).changed is True
