"""The ``currencies`` read model of the demo domain (CONTRACT §4), re-keyed from ``accounts``.

One row per currency: ``{accounts, open_accounts, balance}``, like ``owners``.
"""

NAME = "currencies"
DESCRIPTION = "Per currency: number of accounts, open accounts and their total balance"
SOURCE = "accounts"
INITIAL = {"accounts": 0, "open_accounts": 0, "balance": 0}


def key(account):
    return account["currency"]


def contribution(account):
    return {
        "accounts": 1,
        "open_accounts": 1 if account["status"] == "open" else 0,
        "balance": account["balance"],
    }
