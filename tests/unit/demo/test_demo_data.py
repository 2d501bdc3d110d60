"""projector.demo.generate_histories: deterministic, valid account histories (CONTRACT §4)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.core.envelope import decode_record
from projector.demo.data import CURRENCIES, account_id, generate_histories

sizes = st.integers(min_value=1, max_value=8).flatmap(
    lambda a: st.tuples(st.just(a), st.integers(min_value=a, max_value=a * 10), st.integers(0, 2**32))
)
FAST = settings(max_examples=60, deadline=None)
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def by_account(envelopes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for env in envelopes:
        out[env["aggregate_id"]].append(env)
    return out


def test_same_seed_gives_the_same_events():
    assert list(generate_histories(5, 60, seed=7)) == list(generate_histories(5, 60, seed=7))


def test_different_seeds_give_different_events():
    assert list(generate_histories(5, 60, seed=7)) != list(generate_histories(5, 60, seed=8))


def test_default_seed_is_stable():
    assert list(generate_histories(3, 12)) == list(generate_histories(3, 12, 42))


@pytest.mark.parametrize("accounts,events", [(0, 5), (-1, 5), (3, 2), (1, 0)])
def test_fewer_than_one_event_per_account_is_refused(accounts, events):
    with pytest.raises(ValueError):
        list(generate_histories(accounts, events))


def test_account_ids_are_zero_padded():
    assert account_id(7) == "acc-000007"
    assert {e["aggregate_id"] for e in generate_histories(3, 3)} == {"acc-000000", "acc-000001", "acc-000002"}


@FAST
@given(sizes)
def test_exact_event_count_spread_evenly_over_every_account(size):
    accounts, events, seed = size
    envelopes = list(generate_histories(accounts, events, seed))
    assert len(envelopes) == events
    counts = sorted(len(v) for v in by_account(envelopes).values())
    assert len(counts) == accounts
    assert counts[-1] - counts[0] <= 1


@FAST
@given(sizes)
def test_versions_are_consecutive_from_one_and_start_with_account_opened(size):
    for aid, envs in by_account(list(generate_histories(*size))).items():
        assert [e["version"] for e in envs] == list(range(1, len(envs) + 1)), aid
        assert envs[0]["type"] == "AccountOpened"
        assert envs[0]["data"]["currency"] in CURRENCIES
        assert envs[0]["data"]["owner"].startswith("owner-")
        assert all(e["type"] != "AccountOpened" for e in envs[1:]), aid


@FAST
@given(sizes)
def test_balances_never_go_negative_and_closed_accounts_end_at_zero(size):
    for aid, envs in by_account(list(generate_histories(*size))).items():
        balance = 0
        for i, env in enumerate(envs):
            if env["type"] == "MoneyDeposited":
                assert env["data"]["amount"] > 0
                balance += env["data"]["amount"]
            elif env["type"] == "MoneyWithdrawn":
                assert env["data"]["amount"] > 0
                balance -= env["data"]["amount"]
            elif env["type"] == "AccountClosed":
                assert balance == 0, f"{aid} closed with balance {balance}"
                assert i == len(envs) - 1, f"{aid} has events after AccountClosed"
            assert balance >= 0, f"{aid} went to {balance} at v{env['version']}"


@FAST
@given(sizes)
def test_every_envelope_decodes_with_its_key(size):
    envelopes = list(generate_histories(*size))
    for env in envelopes:
        [ev] = decode_record(env["aggregate_id"].encode(), orjson.dumps(env))
        assert ev.to_dict() == {**env, "schema_version": 1}
        assert ev.aggregate_type == "account"
        assert RFC3339_UTC.match(ev.timestamp), ev.timestamp
    assert len({e["id"] for e in envelopes}) == len(envelopes)


def test_timestamps_increase_one_second_per_event_from_2026():
    stamps = [e["timestamp"] for e in generate_histories(2, 5, 1)]
    assert stamps == [f"2026-01-01T00:00:0{i}Z" for i in range(5)]


def test_some_accounts_close_in_a_large_history():
    envelopes = list(generate_histories(200, 2000, seed=3))
    assert any(e["type"] == "AccountClosed" for e in envelopes)
    assert any(e["type"] == "MoneyWithdrawn" for e in envelopes)


def test_events_of_different_accounts_are_interleaved():
    order = [e["aggregate_id"] for e in generate_histories(4, 40, seed=5)]
    changes = sum(1 for a, b in zip(order, order[1:]) if a != b)
    assert changes > 3  # not one account after the other
