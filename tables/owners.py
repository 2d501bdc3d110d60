"""The ``owners`` read model of the demo domain (CONTRACT §4), re-keyed from ``accounts``.

One row per owner: ``{accounts, open_accounts, balance}`` over all of that
owner's accounts (closed ones count in ``accounts`` only). Pure: no Faust,
no Kafka; the engine carries each account's contribution to its owner.
"""

NAME = "owners"
DESCRIPTION = "Per owner: number of accounts, open accounts and their total balance"
SOURCE = "accounts"
INITIAL = {"accounts": 0, "open_accounts": 0, "balance": 0}


def key(account):
    return account["owner"]


def contribution(account):
    return {
        "accounts": 1,
        "open_accounts": 1 if account["status"] == "open" else 0,
        "balance": account["balance"],
    }
