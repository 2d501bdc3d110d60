"""tables/accounts.py: the demo domain's ``accounts`` read model (CONTRACT §4).

Loaded with ``projector.readmodels.load_read_models()`` - never ``import tables``,
which is PyTables' name.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any, Optional

import orjson
import pytest
from factories import closed, deposit, event, opened, withdrawal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projector.core.catalog import ReadModel
from projector.core.envelope import Event, decode_record
from projector.core.errors import InvalidRecord
from projector.core.fold import FOLD_ERROR, apply_record
from projector.demo.data import generate_histories

OPEN_ROW = {"owner": "alice", "currency": "EUR", "balance": 0, "status": "open", "deposits": 0, "withdrawals": 0}


def fold_error(model: ReadModel, state: Any, ev: Event) -> Exception:
    with pytest.raises(Exception) as info:
        model.fold(state, ev)
    return info.value


# --- the module's declaration ---------------------------------------------------


def test_declares_the_contract_table(accounts):
    assert accounts.name == "accounts"
    assert accounts.handles == {"AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed"}
    assert accounts.description
    assert accounts.initial_state() is None
    assert accounts.keyed_by_aggregate


def test_is_loaded_under_the_projector_tables_package(accounts):
    assert accounts.module is not None
    assert accounts.module.__name__ == "projector_tables.accounts"


# --- AccountOpened ---------------------------------------------------------------------


def test_account_opened_creates_the_row(accounts):
    assert accounts.fold(None, opened("acc-1", "alice", "EUR")) == OPEN_ROW


@pytest.mark.parametrize(
    "data",
    [{}, {"owner": "alice"}, {"currency": "EUR"}, {"owner": 1, "currency": "EUR"},
     {"owner": "alice", "currency": None}, {"owner": ["a"], "currency": "EUR"}],
    ids=repr,
)
def test_account_opened_needs_string_owner_and_currency(accounts, data):
    err = fold_error(accounts, None, event("acc-1", 1, "AccountOpened", data))
    assert "owner and currency" in str(err)


def test_account_opened_twice_is_an_error(accounts):
    err = fold_error(accounts, OPEN_ROW, opened("acc-1"))
    assert "already open" in str(err)


def test_account_opened_on_a_closed_account_is_an_error(accounts):
    fold_error(accounts, {**OPEN_ROW, "status": "closed"}, opened("acc-1"))


# --- MoneyDeposited ------------------------------------------------------------------------


def test_deposit_adds_to_balance_and_counts(accounts):
    state = accounts.fold(OPEN_ROW, deposit("acc-1", 2, 250))
    assert state == {**OPEN_ROW, "balance": 250, "deposits": 1}
    state = accounts.fold(state, deposit("acc-1", 3, 50))
    assert state == {**OPEN_ROW, "balance": 300, "deposits": 2}


def test_fold_does_not_change_the_state_it_is_given(accounts):
    before = dict(OPEN_ROW)
    accounts.fold(before, deposit("acc-1", 2, 250))
    accounts.fold(before, closed("acc-1", 2))
    assert before == OPEN_ROW


@pytest.mark.parametrize("etype", ["MoneyDeposited", "MoneyWithdrawn", "AccountClosed"])
def test_event_before_the_account_was_opened_is_an_error(accounts, etype):
    data = {} if etype == "AccountClosed" else {"amount": 1}
    err = fold_error(accounts, None, event("acc-1", 1, etype, data))
    assert "never opened" in str(err)


@pytest.mark.parametrize("etype", ["MoneyDeposited", "MoneyWithdrawn"])
@pytest.mark.parametrize("amount", [0, -5, 1.5, 10.0, "10", True, None, [10], {"v": 10}], ids=repr)
def test_amount_must_be_a_positive_integer(accounts, etype, amount):
    state = {**OPEN_ROW, "balance": 1000}
    err = fold_error(accounts, state, event("acc-1", 2, etype, {"amount": amount}))
    assert "amount must be an integer > 0" in str(err)


@pytest.mark.parametrize("etype", ["MoneyDeposited", "MoneyWithdrawn"])
def test_missing_amount_is_an_error(accounts, etype):
    err = fold_error(accounts, {**OPEN_ROW, "balance": 1000}, event("acc-1", 2, etype, {}))
    assert "amount" in str(err)


def test_large_amounts_stay_exact(accounts):
    state = accounts.fold(OPEN_ROW, deposit("acc-1", 2, 2**62))
    state = accounts.fold(state, deposit("acc-1", 3, 2**62))
    assert state["balance"] == 2**63


# --- MoneyWithdrawn -----------------------------------------------------------------------


def test_withdrawal_subtracts_from_balance_and_counts(accounts):
    state = accounts.fold({**OPEN_ROW, "balance": 300, "deposits": 1}, withdrawal("acc-1", 3, 120))
    assert state == {**OPEN_ROW, "balance": 180, "deposits": 1, "withdrawals": 1}


def test_withdrawal_of_the_whole_balance_leaves_zero(accounts):
    state = accounts.fold({**OPEN_ROW, "balance": 300}, withdrawal("acc-1", 3, 300))
    assert state["balance"] == 0


def test_withdrawal_above_the_balance_is_a_fold_error(accounts):
    row = apply_record(accounts, None, [opened("acc-1"), deposit("acc-1", 2, 100)]).row
    with pytest.raises(InvalidRecord) as info:
        apply_record(accounts, row, [withdrawal("acc-1", 3, 101)])
    assert info.value.reason == FOLD_ERROR


# --- AccountClosed ----------------------------------------------------------------------------


def test_account_closed_marks_the_row_closed_and_keeps_the_rest(accounts):
    state = {**OPEN_ROW, "deposits": 2, "withdrawals": 2}
    assert accounts.fold(state, closed("acc-1", 5)) == {**state, "status": "closed"}


def test_closing_an_account_with_money_in_it_is_a_fold_error(accounts):
    with pytest.raises(ValueError, match="non-zero balance 10"):
        accounts.fold({**OPEN_ROW, "balance": 10}, closed("acc-1", 5))


@pytest.mark.parametrize("etype", ["MoneyDeposited", "MoneyWithdrawn", "AccountClosed"])
def test_events_after_account_closed_are_fold_errors(accounts, etype):
    state = {**OPEN_ROW, "status": "closed", "balance": 10}
    data = {} if etype == "AccountClosed" else {"amount": 5}
    with pytest.raises(Exception):
        accounts.fold(state, event("acc-1", 3, etype, data))


def test_unhandled_event_type_returns_the_state_unchanged(accounts):
    assert accounts.fold(OPEN_ROW, event("acc-1", 2, "OwnerRenamed", {"owner": "x"})) == OPEN_ROW


def test_fold_errors_are_value_errors(accounts):
    # AccountFoldError subclasses ValueError, and apply_record turns it into fold_error.
    err = fold_error(accounts, None, deposit("acc-1", 1, 5))
    assert isinstance(err, ValueError)
    assert type(err).__name__ == "AccountFoldError"
    with pytest.raises(InvalidRecord) as info:
        apply_record(accounts, None, [deposit("acc-1", 1, 5)])
    assert info.value.reason == FOLD_ERROR
    assert "AccountFoldError" in info.value.message


# --- properties over generated demo histories -----------------------------------------------


def decoded_history(n_accounts: int, n_events: int, seed: int) -> list[Event]:
    out = []
    for env in generate_histories(n_accounts, n_events, seed):
        out.extend(decode_record(env["aggregate_id"].encode(), orjson.dumps(env)))
    return out


histories = st.integers(min_value=1, max_value=6).flatmap(
    lambda a: st.tuples(
        st.just(a),
        st.integers(min_value=a, max_value=a * 12),
        st.integers(min_value=0, max_value=2**32),
    )
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def project_one_by_one(model: ReadModel, events: list[Event]) -> tuple[dict[str, dict], list[tuple[str, int]]]:
    rows: dict[str, Optional[dict]] = {}
    balances: list[tuple[str, int]] = []
    for ev in events:
        result = apply_record(model, rows.get(ev.aggregate_id), [ev])
        assert (result.applied, result.duplicates) == (1, 0), f"{ev} was not applied once"
        rows[ev.aggregate_id] = result.row
        balances.append((ev.aggregate_id, result.row["value"]["balance"]))
    return rows, balances


@FAST
@given(histories)
def test_generated_history_folds_to_the_sums_of_its_events(accounts, history):
    events = decoded_history(*history)
    rows, balances = project_one_by_one(accounts, events)

    deposits: dict[str, list[int]] = defaultdict(list)
    withdrawals: dict[str, list[int]] = defaultdict(list)
    for ev in events:
        if ev.type == "MoneyDeposited":
            deposits[ev.aggregate_id].append(ev.data["amount"])
        elif ev.type == "MoneyWithdrawn":
            withdrawals[ev.aggregate_id].append(ev.data["amount"])

    assert all(balance >= 0 for _, balance in balances), [b for b in balances if b[1] < 0]
    assert len(rows) == history[0]
    for aid, row in rows.items():
        value = row["value"]
        assert value["balance"] == sum(deposits[aid]) - sum(withdrawals[aid])
        assert value["deposits"] == len(deposits[aid])
        assert value["withdrawals"] == len(withdrawals[aid])
        assert row["version"] == max(e.version for e in events if e.aggregate_id == aid)
        closed_here = any(e.type == "AccountClosed" for e in events if e.aggregate_id == aid)
        assert value["status"] == ("closed" if closed_here else "open")


@FAST
@given(histories, st.data())
def test_replaying_a_prefix_changes_nothing(accounts, history, data):
    events = decoded_history(*history)
    rows, _ = project_one_by_one(accounts, events)
    snapshot = copy.deepcopy(rows)
    prefix = data.draw(st.integers(min_value=0, max_value=len(events)), label="prefix")
    for ev in events[:prefix]:
        result = apply_record(accounts, rows[ev.aggregate_id], [ev])
        assert (result.applied, result.duplicates, result.changed) == (0, 1, False)
        rows[ev.aggregate_id] = result.row
    assert rows == snapshot


@FAST
@given(histories, st.integers(min_value=1, max_value=5))
def test_composite_records_fold_like_single_events(accounts, history, chunk):
    events = decoded_history(*history)
    one_by_one, _ = project_one_by_one(accounts, events)
    per_account: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        per_account[ev.aggregate_id].append(ev)
    rows: dict[str, Optional[dict]] = {}
    for aid, evs in per_account.items():
        for start in range(0, len(evs), chunk):
            record = evs[start:start + chunk]
            # re-encode as a real composite record, so the decoder sees it too
            decoded = decode_record(aid.encode(), orjson.dumps([e.to_dict() for e in record]))
            rows[aid] = apply_record(accounts, rows.get(aid), decoded).row
    assert rows == one_by_one
