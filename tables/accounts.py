"""The ``accounts`` read model and the ``account`` aggregate's decider (CONTRACT §4).

Pure: it knows nothing of Faust or Kafka. One row per account id:
``{owner, currency, balance, status, deposits, withdrawals}``. The row is also
the aggregate's state when :func:`decide` judges a command.

The fold holds the domain's invariants: an event that would take a balance
below zero, touch a closed account, or close one with money in it raises,
and the engine rejects the record as ``fold_error``.
"""

from projector import InvalidCommand, Rejected

NAME = "accounts"
DESCRIPTION = "Bank accounts: owner, currency, balance, status and counts of deposits and withdrawals"
HANDLES = ("AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed")

#: This read model is the state of the ``account`` aggregate, which takes commands.
AGGREGATE_TYPE = "account"
COMMANDS = ("OpenAccount", "Deposit", "Withdraw", "CloseAccount")
#: An account id of the demo data (projector/demo/data.py): GET /openapi.json shows it in examples.
EXAMPLE_KEY = "acc-000001"

#: The control settings the decider reads (``PUT /control/{key}``).
MAX_WITHDRAWAL = "accounts.max_withdrawal"
CONTROL = {
    MAX_WITHDRAWAL: {
        "type": "integer",
        "minimum": 0,
        "default": None,
        "description": "a Withdraw above it is rejected as over_limit (default: no limit)",
    },
}


# Secondary indexes: GET /tables/accounts/index/owner/{owner} lists an owner's
# accounts, GET /tables/accounts/index/status/open the open ones. Each function
# gets a row's value and returns the value(s) to find it under (None: none).
def by_owner(value):
    return value["owner"]


def by_status(value):
    return value["status"]


INDEXES = {"owner": by_owner, "status": by_status}


class AccountFoldError(ValueError):
    """An event that cannot apply to the account as it stands."""


def _amount(event) -> int:
    amount = event.data.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise AccountFoldError(f"{event.type}: amount must be an integer > 0, got {amount!r}")
    return amount


def _open(state, event):
    if state is None:
        raise AccountFoldError(f"{event.type} for account {event.aggregate_id} that was never opened")
    if state["status"] != "open":
        raise AccountFoldError(f"{event.type} for account {event.aggregate_id}, which is closed")
    return state


def fold(state, event):
    if event.type == "AccountOpened":
        if state is not None:
            raise AccountFoldError(f"account {event.aggregate_id} is already open")
        owner, currency = event.data.get("owner"), event.data.get("currency")
        if not isinstance(owner, str) or not isinstance(currency, str):
            raise AccountFoldError("AccountOpened needs string owner and currency")
        return {
            "owner": owner,
            "currency": currency,
            "balance": 0,
            "status": "open",
            "deposits": 0,
            "withdrawals": 0,
        }
    if event.type == "MoneyDeposited":
        state = _open(state, event)
        return {**state, "balance": state["balance"] + _amount(event), "deposits": state["deposits"] + 1}
    if event.type == "MoneyWithdrawn":
        state = _open(state, event)
        amount = _amount(event)
        if amount > state["balance"]:
            raise AccountFoldError(
                f"MoneyWithdrawn of {amount} exceeds the balance {state['balance']}: a balance never goes below zero"
            )
        return {**state, "balance": state["balance"] - amount, "withdrawals": state["withdrawals"] + 1}
    if event.type == "AccountClosed":
        state = _open(state, event)
        if state["balance"] != 0:
            raise AccountFoldError(f"AccountClosed with a non-zero balance {state['balance']}")
        return {**state, "status": "closed"}
    return state


# --- the decider: commands in, events out ------------------------------------------


#: The largest amount one command moves (minor units): balances stay far from 64-bit limits.
MAX_AMOUNT = 10**15
MAX_BALANCE = 2**62

_AMOUNT = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_AMOUNT,
    "description": f"Minor units: an integer from 1 to {MAX_AMOUNT:,} (`5.0` counts as `5`).",
}

#: The ``data`` of each command, as :func:`decide` checks it (a field it does not
#: name is ignored; a missing or ill-typed one is 400 ``invalid``), with the
#: reasons it can be rejected for: JSON schemas, for ``GET /openapi.json``.
COMMAND_SCHEMAS = {
    "OpenAccount": {
        "type": "object",
        "description": "Opens the account. Rejected: `already_exists`.",
        "required": ["owner", "currency"],
        "properties": {
            "owner": {"type": "string", "minLength": 1},
            "currency": {"type": "string", "minLength": 1},
            "initial_deposit": {
                "anyOf": [
                    {
                        **_AMOUNT,
                        "description": "Opens and funds the account in one decision (two events). "
                        + _AMOUNT["description"],
                    },
                    {"type": "null"},
                ]
            },
        },
    },
    "Deposit": {
        "type": "object",
        "description": f"Rejected: `not_open`, `balance_limit` (the balance would pass {MAX_BALANCE:,}).",
        "required": ["amount"],
        "properties": {"amount": _AMOUNT},
        "examples": [{"amount": 100}],
    },
    "Withdraw": {
        "type": "object",
        "description": f"Rejected, checked in this order: `not_open`, `over_limit` (above the control setting "
        f"`{MAX_WITHDRAWAL}`), `insufficient_funds`.",
        "required": ["amount"],
        "properties": {"amount": _AMOUNT},
    },
    "CloseAccount": {
        "type": "object",
        "description": "No fields: `{}`. Rejected: `not_open`, `balance_not_zero`.",
    },
}


def _command_amount(data) -> int:
    amount = data.get("amount")
    if isinstance(amount, float) and amount.is_integer():
        amount = int(amount)  # JSON has one number type: 500.0 is the integer 500
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidCommand(f"amount must be an integer from 1 to {MAX_AMOUNT} (minor units), got {amount!r}")
    return amount


def _string(data, field) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidCommand(f"{field} must be a non-empty string, got {value!r}")
    return value


def _must_be_open(state) -> None:
    if state is None or state["status"] != "open":
        raise Rejected("not_open", "the account is not open" if state is None else "the account is closed")


def _max_withdrawal(settings):
    """The limit in force: projector hands deciders the declared default for a missing or invalid entry."""
    limit = settings.get(MAX_WITHDRAWAL)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def decide(state, command, settings):
    """The events an account command produces, or :class:`Rejected`.

    ``OpenAccount {owner, currency}`` may carry ``initial_deposit`` (an
    integer > 0): it then opens and funds the account in one decision, two
    events appended together or not at all. A ``Withdraw`` is checked in the
    order ``not_open``, ``over_limit``, ``insufficient_funds``; a balance
    never goes below zero.
    """
    kind, data = command["type"], command["data"]
    if kind == "OpenAccount":
        owner, currency = _string(data, "owner"), _string(data, "currency")
        initial = data.get("initial_deposit")
        if initial is not None:
            initial = _command_amount({"amount": initial})
        if state is not None:
            raise Rejected("already_exists", "the account exists already")
        events = [{"type": "AccountOpened", "data": {"owner": owner, "currency": currency}}]
        if initial is not None:
            events.append({"type": "MoneyDeposited", "data": {"amount": initial}})
        return events
    if kind == "Deposit":
        amount = _command_amount(data)
        _must_be_open(state)
        if state["balance"] + amount > MAX_BALANCE:
            raise Rejected("balance_limit", f"a balance may not exceed {MAX_BALANCE}")
        return [{"type": "MoneyDeposited", "data": {"amount": amount}}]
    if kind == "Withdraw":
        amount = _command_amount(data)
        _must_be_open(state)
        limit = _max_withdrawal(settings)
        if limit is not None and amount > limit:
            raise Rejected("over_limit", f"withdrawals are limited to {limit}; asked for {amount}")
        if amount > state["balance"]:
            raise Rejected("insufficient_funds", f"the balance is {state['balance']}; asked for {amount}")
        return [{"type": "MoneyWithdrawn", "data": {"amount": amount}}]
    if kind == "CloseAccount":
        _must_be_open(state)
        if state["balance"] != 0:
            raise Rejected("balance_not_zero", f"the balance is {state['balance']}; withdraw it first")
        return [{"type": "AccountClosed", "data": {}}]
    raise InvalidCommand(f"unknown command type {kind!r} for an account; one of {', '.join(COMMANDS)}")
