"""The ``accounts`` read model of the demo domain (CONTRACT §4).

Pure: it knows nothing of Faust or Kafka. One row per account id:
``{owner, currency, balance, status, deposits, withdrawals}``.

The fold holds the domain's invariants: an event that would take a balance
below zero, touch a closed account, or close one with money in it raises,
and the engine rejects the record as ``fold_error``.
"""

NAME = "accounts"
DESCRIPTION = "Bank accounts: owner, currency, balance, status and counts of deposits and withdrawals"
HANDLES = ("AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed")


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
