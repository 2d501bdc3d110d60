"""projector.core.derived: repartition messages (source side) and group rows (group side)."""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.core.catalog import DerivedModel, load_catalog
from projector.core.derived import apply_change, change_messages, contribution_of, member_key

BY_COLOUR = DerivedModel(
    name="by_colour",
    description="members per colour",
    source="things",
    group_key=lambda row: row.get("colour"),
    contribution=lambda row: {"n": 1, "total": row["total"]},
)

WITH_INITIAL = DerivedModel(
    name="with_initial",
    description="",
    source="things",
    group_key=lambda row: row["colour"],
    contribution=lambda row: {"n": 1, "total": row["total"]},
    initial={"n": 0, "total": 0, "extra": 0},
)


def msg(aid: str, version: int, contribution: Optional[dict]) -> dict[str, Any]:
    return {"aggregate_id": aid, "version": version, "contribution": contribution}


# --- contribution_of ------------------------------------------------------------------------


def test_member_key_is_group_nul_aggregate():
    assert member_key(b"red", b"acc-1") == b"red\x00acc-1"


def test_contribution_of_a_row():
    assert contribution_of(BY_COLOUR, {"colour": "red", "total": 5}) == ("red", {"n": 1, "total": 5})


def test_no_row_and_no_group_contribute_nothing():
    assert contribution_of(BY_COLOUR, None) is None
    assert contribution_of(BY_COLOUR, {"total": 5}) is None  # key(row) is None


@pytest.mark.parametrize("group", ["", 5, b"red", ["red"]])
def test_group_key_must_be_a_non_empty_string(group):
    model = DerivedModel("m", "", "things", group_key=lambda row: group, contribution=lambda row: {})
    with pytest.raises(ValueError) as info:
        contribution_of(model, {"x": 1})
    assert "key(row)" in str(info.value)


@pytest.mark.parametrize("c", [None, 5, [1]])
def test_contribution_must_be_a_dict(c):
    model = DerivedModel("m", "", "things", group_key=lambda row: "g", contribution=lambda row: c)
    with pytest.raises(ValueError) as info:
        contribution_of(model, {"x": 1})
    assert "contribution(row)" in str(info.value)


def test_repository_owners_and_currencies_contributions():
    catalog = load_catalog(Path(__file__).resolve().parents[3] / "tables")
    row = {"owner": "ann", "currency": "CHF", "balance": 70, "status": "closed", "deposits": 1, "withdrawals": 0}
    expected = {"accounts": 1, "open_accounts": 0, "balance": 70}
    assert contribution_of(catalog.get("owners"), row) == ("ann", expected)
    assert contribution_of(catalog.get("currencies"), row) == ("CHF", expected)
    assert contribution_of(catalog.get("owners"), {**row, "status": "open"})[1]["open_accounts"] == 1


# --- change_messages ---------------------------------------------------------------------------


def test_new_member_is_one_upsert():
    assert change_messages(None, ("red", {"n": 1}), "a", 1) == [("red", msg("a", 1, {"n": 1}))]


def test_change_within_the_same_group_is_one_upsert():
    out = change_messages(("red", {"n": 1, "total": 1}), ("red", {"n": 1, "total": 9}), "a", 4)
    assert out == [("red", msg("a", 4, {"n": 1, "total": 9}))]


def test_change_of_group_is_a_retraction_then_an_upsert():
    out = change_messages(("red", {"n": 1, "total": 1}), ("blue", {"n": 1, "total": 9}), "a", 7)
    assert out == [("red", msg("a", 7, None)), ("blue", msg("a", 7, {"n": 1, "total": 9}))]


def test_change_of_group_with_the_same_contribution_still_moves_it():
    out = change_messages(("red", {"n": 1}), ("blue", {"n": 1}), "a", 2)
    assert out == [("red", msg("a", 2, None)), ("blue", msg("a", 2, {"n": 1}))]


def test_unchanged_contribution_sends_nothing():
    assert change_messages(("red", {"n": 1, "total": 3}), ("red", {"n": 1, "total": 3}), "a", 5) == []
    assert change_messages(None, None, "a", 5) == []


def test_leaving_every_group_is_one_retraction():
    assert change_messages(("red", {"n": 1}), None, "a", 3) == [("red", msg("a", 3, None))]


# --- apply_change ----------------------------------------------------------------------------------


def test_first_member_creates_the_group_row_from_the_initial_state():
    change = apply_change(WITH_INITIAL, None, None, msg("a", 1, {"n": 1, "total": 5}))
    assert change.applied
    assert change.row == {"version": 1, "value": {"n": 1, "total": 5, "extra": 0}, "members": 1}
    assert change.member == {"version": 1, "contribution": {"n": 1, "total": 5}}
    assert WITH_INITIAL.initial == {"n": 0, "total": 0, "extra": 0}


def test_default_initial_is_empty_and_sums_are_field_wise():
    change = apply_change(BY_COLOUR, None, None, msg("a", 1, {"n": 1, "total": 5}))
    assert change.row["value"] == {"n": 1, "total": 5}


def test_second_member_adds_and_bumps_the_group_version():
    row = apply_change(BY_COLOUR, None, None, msg("a", 1, {"n": 1, "total": 5})).row
    change = apply_change(BY_COLOUR, row, None, msg("b", 3, {"n": 1, "total": 2}))
    # The group version is the sum of its members' versions: 1 + 3.
    assert change.row == {"version": 4, "value": {"n": 2, "total": 7}, "members": 2}


def test_update_of_a_member_takes_the_old_contribution_out_and_puts_the_new_one_in():
    row = {"version": 2, "value": {"n": 2, "total": 7}, "members": 2}
    member = {"version": 1, "contribution": {"n": 1, "total": 5}}
    change = apply_change(BY_COLOUR, row, member, msg("a", 4, {"n": 1, "total": 50}))
    assert change.applied
    assert change.row == {"version": 5, "value": {"n": 2, "total": 52}, "members": 2}
    assert change.member == {"version": 4, "contribution": {"n": 1, "total": 50}}


@pytest.mark.parametrize("version", [3, 4])
def test_stale_or_replayed_message_is_skipped(version):
    row = {"version": 2, "value": {"n": 2, "total": 7}, "members": 2}
    member = {"version": 4, "contribution": {"n": 1, "total": 5}}
    snapshot = copy.deepcopy((row, member))
    change = apply_change(BY_COLOUR, row, member, msg("a", version, {"n": 1, "total": 1000}))
    assert not change.applied
    assert change.row is row and change.member is member
    assert (row, member) == snapshot


def test_retraction_of_one_of_two_members():
    row = {"version": 2, "value": {"n": 2, "total": 7}, "members": 2}
    member = {"version": 1, "contribution": {"n": 1, "total": 5}}
    change = apply_change(BY_COLOUR, row, member, msg("a", 6, None))
    assert change.row == {"version": 7, "value": {"n": 1, "total": 2}, "members": 1}
    assert change.member == {"version": 6, "contribution": None}


def test_group_row_is_emptied_but_kept_when_its_last_member_leaves():
    row = apply_change(BY_COLOUR, None, None, msg("a", 1, {"n": 1, "total": 5})).row
    change = apply_change(BY_COLOUR, row, {"version": 1, "contribution": {"n": 1, "total": 5}}, msg("a", 2, None))
    assert change.applied
    # value None is served as 404; the row stays so its version never goes back.
    assert change.row == {"version": 2, "value": None, "members": 0}
    assert change.member == {"version": 2, "contribution": None}


def test_replayed_retraction_after_the_member_left_is_skipped():
    member = {"version": 2, "contribution": None}
    change = apply_change(BY_COLOUR, None, member, msg("a", 2, None))
    assert not change.applied and change.row is None


def test_member_that_left_can_come_back():
    member = {"version": 2, "contribution": None}
    emptied = {"version": 2, "value": None, "members": 0}
    change = apply_change(BY_COLOUR, emptied, member, msg("a", 5, {"n": 1, "total": 8}))
    assert change.row == {"version": 5, "value": {"n": 1, "total": 8}, "members": 1}


def test_custom_add_and_subtract_are_used():
    model = DerivedModel(
        "names", "", "things", group_key=lambda r: "g", contribution=lambda r: {"name": r["name"]},
        initial={"names": []},
        add=lambda s, c: {"names": sorted([*s["names"], c["name"]])},
        subtract=lambda s, c: {"names": [n for n in s["names"] if n != c["name"]]},
    )
    row = apply_change(model, None, None, msg("a", 1, {"name": "zed"})).row
    row = apply_change(model, row, None, msg("b", 1, {"name": "amy"})).row
    assert row["value"] == {"names": ["amy", "zed"]}
    row = apply_change(model, row, {"version": 1, "contribution": {"name": "zed"}}, msg("a", 2, {"name": "bo"})).row
    assert row["value"] == {"names": ["amy", "bo"]}


# --- property: group rows equal a direct group-by, whatever the order of replays -----------------

updates = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),  # member (aggregate id)
        st.one_of(st.none(), st.sampled_from(["red", "blue", "green"])),  # its group after the change
        st.integers(min_value=0, max_value=100),  # its total
    ),
    max_size=40,
)


@given(updates, st.lists(st.integers(min_value=0, max_value=10**6), max_size=10))
@settings(max_examples=150, deadline=None)
def test_group_rows_follow_every_change_of_hands_and_ignore_replays(changes, replay_picks):
    current: dict[str, Optional[tuple[str, dict]]] = {}
    version: dict[str, int] = defaultdict(int)
    rows: dict[str, dict] = {}
    members: dict[tuple[str, str], dict] = {}
    sent: list[tuple[str, dict]] = []

    def deliver(group: str, message: dict) -> None:
        mkey = (group, message["aggregate_id"])
        change = apply_change(BY_COLOUR, rows.get(group), members.get(mkey), message)
        if change.applied:
            members[mkey] = change.member
            assert change.row["version"] > (rows[group]["version"] if group in rows else 0), "versions only grow"
            rows[group] = change.row

    for aid, group, total in changes:
        version[aid] += 1
        new = (group, {"n": 1, "total": total}) if group is not None else None
        for out in change_messages(current.get(aid), new, aid, version[aid]):
            sent.append(out)
            deliver(*out)
        current[aid] = new
    for pick in replay_picks:  # re-deliver earlier messages: nothing may change
        if sent:
            deliver(*sent[pick % len(sent)])

    expected: dict[str, dict] = {}
    for c in current.values():
        if c is not None:
            g = expected.setdefault(c[0], {"n": 0, "total": 0})
            g["n"] += 1
            g["total"] += c[1]["total"]
    live = {g: r for g, r in rows.items() if r["value"] is not None}
    assert {g: r["value"] for g, r in live.items()} == expected
    assert {g: r["members"] for g, r in live.items()} == {g: v["n"] for g, v in expected.items()}
    assert all(r["members"] == 0 for g, r in rows.items() if g not in live)
