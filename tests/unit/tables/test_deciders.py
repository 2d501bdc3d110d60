"""tables/accounts.py's decider: ``decide(state, command, settings)`` (CONTRACT §4).

The accounts module is loaded by path through the ``accounts`` fixture
(``projector.readmodels``), never ``import tables``. The properties run random
command sequences through the real ``decide`` and the real ``fold`` and check
them against a small independent model of an account.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import pytest
from factories import event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projector.core.catalog import ReadModel
from projector.core.errors import InvalidCommand, Rejected

AID = "acc-1"
LIMIT = "accounts.max_withdrawal"
OPEN_ROW = {"owner": "alice", "currency": "EUR", "balance": 0, "status": "open", "deposits": 0, "withdrawals": 0}
CLOSED_ROW = {**OPEN_ROW, "status": "closed"}
NO_SETTINGS: dict[str, Any] = {}
#: The bounds the decider keeps (tables/accounts.py; the API's schema says the same of amounts).
MAX_AMOUNT = 10**15
MAX_BALANCE = 2**62


@pytest.fixture(scope="module")
def decide(accounts: ReadModel):
    assert accounts.module is not None
    return accounts.module.decide


def cmd(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


def row(balance: int = 0, status: str = "open", deposits: int = 0, withdrawals: int = 0) -> dict[str, Any]:
    return {**OPEN_ROW, "balance": balance, "status": status, "deposits": deposits, "withdrawals": withdrawals}


def rejected(decide, state, command, settings_=NO_SETTINGS) -> Rejected:
    with pytest.raises(Rejected) as info:
        decide(state, command, settings_)
    return info.value


def invalid(decide, state, command, settings_=NO_SETTINGS) -> InvalidCommand:
    with pytest.raises(InvalidCommand) as info:
        decide(state, command, settings_)
    return info.value


def fold_all(accounts: ReadModel, state: Any, events: list[dict], first_version: int) -> Any:
    for i, ev in enumerate(events):
        state = accounts.fold(state, event(AID, first_version + i, ev["type"], ev["data"]))
    return state


# --- the module declares an aggregate ---------------------------------------------------


def test_accounts_declares_the_account_aggregate(accounts, decide):
    assert accounts.aggregate_type == "account"
    assert accounts.commands == ("OpenAccount", "Deposit", "Withdraw", "CloseAccount")
    assert accounts.decide is decide


def test_the_bounds_are_the_ones_these_tests_model(accounts):
    assert (accounts.module.MAX_AMOUNT, accounts.module.MAX_BALANCE) == (MAX_AMOUNT, MAX_BALANCE)


# --- OpenAccount ------------------------------------------------------------------------


def test_open_account_gives_account_opened(decide):
    assert decide(None, cmd("OpenAccount", owner="bob", currency="USD"), NO_SETTINGS) == [
        {"type": "AccountOpened", "data": {"owner": "bob", "currency": "USD"}}
    ]


def test_open_account_with_initial_deposit_gives_opened_then_deposited(decide, accounts):
    events = decide(None, cmd("OpenAccount", owner="bob", currency="USD", initial_deposit=250), NO_SETTINGS)
    assert events == [
        {"type": "AccountOpened", "data": {"owner": "bob", "currency": "USD"}},
        {"type": "MoneyDeposited", "data": {"amount": 250}},
    ]
    assert fold_all(accounts, None, events, 1) == {
        "owner": "bob", "currency": "USD", "balance": 250, "status": "open", "deposits": 1, "withdrawals": 0,
    }


def test_open_account_with_null_initial_deposit_is_a_plain_open(decide):
    events = decide(None, cmd("OpenAccount", owner="bob", currency="USD", initial_deposit=None), NO_SETTINGS)
    assert [e["type"] for e in events] == ["AccountOpened"]


@pytest.mark.parametrize("state", [OPEN_ROW, row(balance=40), CLOSED_ROW], ids=["open", "funded", "closed"])
def test_open_account_that_exists_is_already_exists(decide, state):
    assert rejected(decide, state, cmd("OpenAccount", owner="alice", currency="EUR")).reason == "already_exists"


# --- not_open -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [cmd("Deposit", amount=10), cmd("Withdraw", amount=10), cmd("CloseAccount")],
    ids=lambda c: c["type"],
)
@pytest.mark.parametrize(
    "state", [None, CLOSED_ROW, row(balance=100, status="closed")], ids=["missing", "closed", "closed-funded"]
)
def test_commands_on_a_missing_or_closed_account_are_not_open(decide, state, command):
    assert rejected(decide, state, command, {LIMIT: 5}).reason == "not_open"


# --- Deposit ------------------------------------------------------------------------------


def test_deposit_gives_money_deposited(decide):
    assert decide(row(balance=7), cmd("Deposit", amount=93), {LIMIT: 1}) == [
        {"type": "MoneyDeposited", "data": {"amount": 93}}
    ]


def test_deposit_up_to_the_balance_bound_is_allowed(decide):
    assert decide(row(balance=MAX_BALANCE - 5), cmd("Deposit", amount=5), NO_SETTINGS) == [
        {"type": "MoneyDeposited", "data": {"amount": 5}}
    ]


def test_deposit_past_the_balance_bound_is_balance_limit(decide):
    assert rejected(decide, row(balance=MAX_BALANCE - 5), cmd("Deposit", amount=6)).reason == "balance_limit"
    assert rejected(decide, row(balance=MAX_BALANCE), cmd("Deposit", amount=1)).reason == "balance_limit"


def test_not_open_comes_before_balance_limit(decide):
    state = row(balance=MAX_BALANCE, status="closed")
    assert rejected(decide, state, cmd("Deposit", amount=1)).reason == "not_open"


# --- Withdraw -----------------------------------------------------------------------------


def test_withdraw_within_balance_and_limit_gives_money_withdrawn(decide):
    assert decide(row(balance=100), cmd("Withdraw", amount=60), {LIMIT: 60}) == [
        {"type": "MoneyWithdrawn", "data": {"amount": 60}}
    ]


def test_withdraw_of_the_whole_balance_is_allowed(decide):
    assert decide(row(balance=100), cmd("Withdraw", amount=100), NO_SETTINGS) == [
        {"type": "MoneyWithdrawn", "data": {"amount": 100}}
    ]


def test_withdraw_over_the_limit_is_over_limit(decide):
    err = rejected(decide, row(balance=1000), cmd("Withdraw", amount=101), {LIMIT: 100})
    assert err.reason == "over_limit"
    assert "100" in err.detail and "101" in err.detail


def test_a_limit_of_zero_refuses_every_withdrawal(decide):
    assert rejected(decide, row(balance=1000), cmd("Withdraw", amount=1), {LIMIT: 0}).reason == "over_limit"


def test_withdraw_above_the_balance_is_insufficient_funds(decide):
    err = rejected(decide, row(balance=50), cmd("Withdraw", amount=51), {LIMIT: 100})
    assert err.reason == "insufficient_funds"
    assert "50" in err.detail


@pytest.mark.parametrize("limit_settings", [NO_SETTINGS, {LIMIT: None}], ids=["absent", "null"])
def test_without_a_limit_only_the_balance_bounds_a_withdrawal(decide, limit_settings):
    assert decide(row(balance=10**12), cmd("Withdraw", amount=10**12), limit_settings) == [
        {"type": "MoneyWithdrawn", "data": {"amount": 10**12}}
    ]
    assert rejected(decide, row(balance=5), cmd("Withdraw", amount=6), limit_settings).reason == "insufficient_funds"


def test_over_limit_comes_before_insufficient_funds(decide):
    # 500 is both above the limit and above the balance: the limit wins.
    assert rejected(decide, row(balance=20), cmd("Withdraw", amount=500), {LIMIT: 100}).reason == "over_limit"


@pytest.mark.parametrize("state", [None, row(balance=20, status="closed")], ids=["missing", "closed"])
def test_not_open_comes_before_over_limit_and_insufficient_funds(decide, state):
    assert rejected(decide, state, cmd("Withdraw", amount=500), {LIMIT: 100}).reason == "not_open"


@pytest.mark.parametrize("limit", ["100", "1", True, False, 1.5, 0.0, [1], {"v": 1}], ids=repr)
def test_a_limit_of_the_wrong_type_is_ignored(decide, limit):
    # Each of these, read as a number, would refuse a withdrawal of 150.
    assert decide(row(balance=200), cmd("Withdraw", amount=150), {LIMIT: limit}) == [
        {"type": "MoneyWithdrawn", "data": {"amount": 150}}
    ]
    # ... and the balance still bounds it.
    err = rejected(decide, row(balance=100), cmd("Withdraw", amount=150), {LIMIT: limit})
    assert err.reason == "insufficient_funds"


def test_other_settings_do_not_act_as_a_limit(decide):
    assert decide(row(balance=200), cmd("Withdraw", amount=150), {"commands.enabled": True, "x.max_withdrawal": 1}) == [
        {"type": "MoneyWithdrawn", "data": {"amount": 150}}
    ]


# --- CloseAccount -------------------------------------------------------------------------


def test_close_an_empty_account_gives_account_closed(decide):
    assert decide(row(balance=0, deposits=3, withdrawals=3), cmd("CloseAccount"), NO_SETTINGS) == [
        {"type": "AccountClosed", "data": {}}
    ]


def test_close_an_account_with_money_is_balance_not_zero(decide):
    err = rejected(decide, row(balance=1), cmd("CloseAccount"), NO_SETTINGS)
    assert err.reason == "balance_not_zero"
    assert "1" in err.detail


# --- InvalidCommand ---------------------------------------------------------------------------

BAD_AMOUNTS = [0, -1, -100, 0.0, -3.0, 1.5, float("inf"), float("nan"), MAX_AMOUNT + 1, float(MAX_AMOUNT * 10),
               "10", True, False, None, [10], {"v": 10}]


@pytest.mark.parametrize("kind", ["Rename", "openaccount", "", "AccountOpened"])
def test_unknown_command_type_is_invalid(decide, kind):
    invalid(decide, OPEN_ROW, cmd(kind, amount=1))
    invalid(decide, None, cmd(kind, owner="a", currency="EUR"))


@pytest.mark.parametrize("kind", ["Deposit", "Withdraw"])
@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
def test_amount_must_be_a_positive_int(decide, kind, amount):
    err = invalid(decide, row(balance=1000), cmd(kind, amount=amount))
    assert "amount" in str(err)


@pytest.mark.parametrize("kind", ["Deposit", "Withdraw"])
@pytest.mark.parametrize(
    "amount,expected", [(1, 1), (MAX_AMOUNT, MAX_AMOUNT), (500.0, 500), (float(MAX_AMOUNT), MAX_AMOUNT)], ids=repr
)
def test_amount_may_be_any_integer_up_to_the_bound_even_written_as_a_float(decide, kind, amount, expected):
    [ev] = decide(row(balance=MAX_AMOUNT), cmd(kind, amount=amount), NO_SETTINGS)
    assert ev["data"] == {"amount": expected}
    assert type(ev["data"]["amount"]) is int


def test_initial_deposit_written_as_a_float_is_an_integer(decide):
    events = decide(None, cmd("OpenAccount", owner="a", currency="EUR", initial_deposit=40.0), NO_SETTINGS)
    assert events[1] == {"type": "MoneyDeposited", "data": {"amount": 40}}
    assert type(events[1]["data"]["amount"]) is int


@pytest.mark.parametrize("kind", ["Deposit", "Withdraw"])
def test_missing_amount_is_invalid(decide, kind):
    invalid(decide, row(balance=1000), cmd(kind))


@pytest.mark.parametrize("kind", ["Deposit", "Withdraw"])
def test_a_malformed_command_is_invalid_even_on_an_account_that_is_not_open(decide, kind):
    invalid(decide, None, cmd(kind, amount=0))
    invalid(decide, CLOSED_ROW, cmd(kind, amount="5"))


@pytest.mark.parametrize("initial", [0, -5, 0.0, 2.5, MAX_AMOUNT + 1, "5", True, False, [5]], ids=repr)
def test_initial_deposit_must_be_a_positive_int(decide, initial):
    invalid(decide, None, cmd("OpenAccount", owner="alice", currency="EUR", initial_deposit=initial))


@pytest.mark.parametrize(
    "data",
    [{}, {"owner": "alice"}, {"currency": "EUR"}, {"owner": "", "currency": "EUR"}, {"owner": "alice", "currency": ""},
     {"owner": 1, "currency": "EUR"}, {"owner": "alice", "currency": None}, {"owner": ["a"], "currency": "EUR"}],
    ids=repr,
)
def test_open_account_needs_owner_and_currency(decide, data):
    invalid(decide, None, {"type": "OpenAccount", "data": data})


def test_invalid_command_is_a_value_error_and_not_a_rejection(decide):
    err = invalid(decide, None, cmd("Deposit", amount=-1))
    assert isinstance(err, ValueError)
    assert not isinstance(err, Rejected)


# --- determinism and purity ---------------------------------------------------------------------

CASES = [
    (None, cmd("OpenAccount", owner="alice", currency="EUR", initial_deposit=5), {LIMIT: 1}),
    (row(balance=100, deposits=1), cmd("Withdraw", amount=40), {LIMIT: 50}),
    (row(balance=100, deposits=1), cmd("Withdraw", amount=60), {LIMIT: 50}),
    (row(balance=0), cmd("CloseAccount"), NO_SETTINGS),
    (row(balance=9), cmd("Deposit", amount=1), {LIMIT: None}),
    (CLOSED_ROW, cmd("Deposit", amount=1), NO_SETTINGS),
]


def outcome(decide, state, command, settings_) -> tuple:
    try:
        return ("events", decide(state, command, settings_))
    except Rejected as exc:
        return ("rejected", exc.reason, exc.detail)
    except InvalidCommand as exc:
        return ("invalid", str(exc))


@pytest.mark.parametrize("state,command,settings_", CASES)
def test_decide_is_deterministic_and_mutates_nothing(decide, state, command, settings_):
    before = copy.deepcopy((state, command, settings_))
    first = outcome(decide, state, command, settings_)
    second = outcome(decide, copy.deepcopy(state), copy.deepcopy(command), dict(settings_))
    assert first == second
    assert (state, command, settings_) == before


def test_returned_events_do_not_alias_the_command(decide):
    command = cmd("Deposit", amount=5)
    events = decide(row(), command, NO_SETTINGS)
    events[0]["data"]["amount"] = 999
    assert command == cmd("Deposit", amount=5)
    assert decide(row(), command, NO_SETTINGS) == [{"type": "MoneyDeposited", "data": {"amount": 5}}]


# --- properties: decide, the real fold and an independent model agree -------------------------

ABSENT = object()  # a key left out of the command data or the settings

good_amounts = st.integers(min_value=1, max_value=300)
bad_amounts = st.sampled_from([0, -1, -50, 0.0, 1.5, "20", True, False, None, [5], ABSENT, MAX_AMOUNT + 1])
edge_amounts = st.sampled_from([20.0, 1.0, MAX_AMOUNT, float(MAX_AMOUNT), float("inf")])
good_names = st.sampled_from(["alice", "bob", "EUR", "USD"])
bad_names = st.sampled_from(["", None, 7, ["x"], ABSENT])
limits = st.one_of(
    st.just(ABSENT), st.none(), st.integers(min_value=0, max_value=350),
    st.sampled_from(["100", True, False, 2.5, 0.0]),
)
COMMAND_KINDS = (
    ["OpenAccount"] * 2 + ["Deposit"] * 4 + ["Withdraw"] * 5 + ["CloseAccount"] * 2
    + ["Transfer", "deposit", "MoneyDeposited"]
)


def _data(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not ABSENT}


def _one_in(draw, n: int) -> bool:
    return draw(st.integers(min_value=1, max_value=n)) == n


@st.composite
def command_strategy(draw, model: Optional[dict] = None, limit: Any = ABSENT):
    """A random command, valid or not; amounts lean towards the balance and the limit in force."""
    near = []
    balance = model["balance"] if model else 0
    if 0 < balance < MAX_AMOUNT:
        near += [balance, balance + 1, draw(st.integers(min_value=1, max_value=balance))]
    if type(limit) is int and limit > 0:
        near += [limit, limit + 1]
    room = MAX_BALANCE - balance
    if model and 0 < room < MAX_AMOUNT:
        near += [room, room + 1]

    def amount() -> Any:
        if _one_in(draw, 8):
            return draw(bad_amounts)
        if _one_in(draw, 12):
            return draw(edge_amounts)
        if near and not _one_in(draw, 3):
            return draw(st.sampled_from(near))
        return draw(good_amounts)

    def name() -> Any:
        return draw(bad_names) if _one_in(draw, 10) else draw(good_names)

    kind = "OpenAccount" if model is None and not _one_in(draw, 4) else draw(st.sampled_from(COMMAND_KINDS))
    if kind == "OpenAccount":
        initial = draw(st.sampled_from([ABSENT, None])) if _one_in(draw, 2) else amount()
        return cmd(kind, **_data(owner=name(), currency=name(), initial_deposit=initial))
    if kind == "CloseAccount":
        return cmd(kind)
    return cmd(kind, **_data(amount=amount()))


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _amount(x: Any) -> Optional[int]:
    """The amount a command means, or None when it is not one: an int (or a whole float) from 1 to MAX_AMOUNT."""
    if type(x) is float and math.isfinite(x) and math.floor(x) == x:
        x = int(x)
    return x if type(x) is int and 1 <= x <= MAX_AMOUNT else None


def _name(x: Any) -> bool:
    return type(x) is str and x != ""


def model_step(model: Optional[dict], command: dict, settings_: dict) -> tuple[str, Any]:
    """The account rules, written independently of tables/accounts.py.

    Returns ("invalid", None), ("rejected", reason) or ("ok", (new model, event types)).
    A malformed command is invalid whatever the state; then not_open /
    already_exists; for Deposit the balance bound; for Withdraw the limit
    before the balance.
    """
    kind, data = command["type"], command["data"]
    limit = settings_.get(LIMIT)
    if type(limit) is not int:
        limit = None
    is_open = model is not None and model["status"] == "open"

    if kind == "OpenAccount":
        initial = data.get("initial_deposit")
        if not (_name(data.get("owner")) and _name(data.get("currency"))):
            return "invalid", None
        if initial is not None:
            initial = _amount(initial)
            if initial is None:
                return "invalid", None
        if model is not None:
            return "rejected", "already_exists"
        new = {"owner": data["owner"], "currency": data["currency"], "status": "open",
               "balance": initial or 0, "deposits": 1 if initial else 0, "withdrawals": 0}
        return "ok", (new, ["AccountOpened"] + (["MoneyDeposited"] if initial else []))
    if kind in ("Deposit", "Withdraw"):
        amount = _amount(data.get("amount"))
        if amount is None:
            return "invalid", None
        if not is_open:
            return "rejected", "not_open"
        if kind == "Deposit":
            if model["balance"] + amount > MAX_BALANCE:
                return "rejected", "balance_limit"
            new = {**model, "balance": model["balance"] + amount, "deposits": model["deposits"] + 1}
            return "ok", (new, ["MoneyDeposited"])
        if limit is not None and amount > limit:
            return "rejected", "over_limit"
        if amount > model["balance"]:
            return "rejected", "insufficient_funds"
        new = {**model, "balance": model["balance"] - amount, "withdrawals": model["withdrawals"] + 1}
        return "ok", (new, ["MoneyWithdrawn"])
    if kind == "CloseAccount":
        if not is_open:
            return "rejected", "not_open"
        if model["balance"] != 0:
            return "rejected", "balance_not_zero"
        return "ok", ({**model, "status": "closed"}, ["AccountClosed"])
    return "invalid", None


def _settings_for(limit: Any) -> dict[str, Any]:
    return {} if limit is ABSENT else {LIMIT: limit, "commands.enabled": True}


@PROPS
@given(st.integers(min_value=1, max_value=40), st.data())
def test_decide_fold_and_model_agree_on_random_command_sequences(accounts, decide, n_steps, data):
    state: Optional[dict] = None  # what the real fold built
    model: Optional[dict] = None  # what the independent model says
    version = 0
    for _ in range(n_steps):
        limit = data.draw(limits, label="limit")
        command = data.draw(command_strategy(model, limit), label="command")
        settings_ = _settings_for(limit)
        expected = model_step(model, command, settings_)
        before = copy.deepcopy((state, command, settings_))
        try:
            events = decide(state, command, settings_)
        except Rejected as exc:
            assert expected == ("rejected", exc.reason), (command, settings_, state)
            assert exc.detail
        except InvalidCommand:
            assert expected == ("invalid", None), (command, settings_, state)
        else:
            assert expected[0] == "ok", (command, settings_, state, events, expected)
            assert (state, command, settings_) == before  # decide mutated nothing
            new_model, types = expected[1]
            assert [e["type"] for e in events] == types
            for ev in events:
                version += 1
                # the fold must accept every event decide produced: it raises on what breaks an invariant
                state = accounts.fold(state, event(AID, version, ev["type"], ev["data"]))
                assert state["balance"] >= 0, (ev, state)
            model = new_model
        if expected[0] != "ok":
            assert (state, command, settings_) == before  # a refused command changes nothing
        assert state == model
        if state is not None:
            assert state["balance"] >= 0


@st.composite
def account_states(draw) -> Optional[dict]:
    """None (no account yet) or a row, open or closed, with a small balance or one near MAX_BALANCE."""
    if _one_in(draw, 5):
        return None
    balance = draw(st.integers(min_value=0, max_value=400)) if not _one_in(draw, 3) else \
        draw(st.integers(min_value=MAX_BALANCE - 400, max_value=MAX_BALANCE))
    status = "closed" if _one_in(draw, 4) else "open"
    return {**OPEN_ROW, "balance": balance, "status": status,
            "deposits": draw(st.integers(min_value=0, max_value=9)),
            "withdrawals": draw(st.integers(min_value=0, max_value=9))}


@PROPS
@given(account_states(), limits, st.data())
def test_decide_on_any_state_is_deterministic_pure_and_matches_the_model(accounts, decide, state, limit, data):
    command = data.draw(command_strategy(state, limit), label="command")
    settings_ = _settings_for(limit)
    before = copy.deepcopy((state, command, settings_))
    first = outcome(decide, state, command, settings_)
    assert (state, command, settings_) == before
    assert outcome(decide, copy.deepcopy(state), copy.deepcopy(command), copy.deepcopy(settings_)) == first

    expected = model_step(copy.deepcopy(state), command, settings_)
    if first[0] == "events":
        assert expected[0] == "ok"
        new_model, types = expected[1]
        assert [e["type"] for e in first[1]] == types
        # the fold accepts what the decider produced from any state, and lands where the model does
        assert fold_all(accounts, state, first[1], 1 if state is None else 10) == new_model
    elif first[0] == "rejected":
        assert expected == ("rejected", first[1])
    else:
        assert expected == ("invalid", None)
