"""projector.core.lifecycle: which read-model version is live, which is built, and how a build reports progress."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from projector.core.catalog import Catalog, ReadModel, load_catalog, versioned_table
from projector.core.engine import tables_of
from projector.core.errors import ReadModelError
from projector.core.indexes import index_table
from projector.core.lifecycle import (
    BuildProgress,
    TableState,
    build_key,
    cutover_key,
    live_key,
    live_version,
    plan_tables,
    versions_in,
)


def model(name: str = "accounts", version: int = 1, **kw) -> ReadModel:
    return ReadModel(name, f"{name} rows", frozenset({"Happened"}), lambda s, e: {}, version=version, **kw)


def catalog(*models: ReadModel) -> Catalog:
    return Catalog(models=list(models), derived=[], modules=[])


def plan(m: ReadModel, existing=(), entries=None, fresh=False) -> TableState:
    return plan_tables(catalog(m), entries or {}, existing, fresh)[m.name]


# --- control keys and table names ------------------------------------------------------------


def test_control_keys_and_version_tables():
    assert live_key("accounts") == "projector.tables.accounts"
    assert cutover_key("accounts") == "projector.cutover.accounts"
    assert build_key("accounts", 2, 3) == "projector.build.accounts.v2.p3"
    assert versioned_table("accounts", 1) == "accounts"
    assert versioned_table("accounts", 2) == "accounts-v2"
    assert model(version=1).table == "accounts" and model(version=7).table == "accounts-v7"


def test_versions_in_reads_only_the_tables_of_that_read_model():
    names = ["accounts", "accounts-v2", "accounts-v10", "_accounts_idx", "_accounts-v2_idx", "accountsx",
             "accounts-v", "accounts-vx", "other-accounts", "accounts-v3-changelog", "owners"]
    assert versions_in("accounts", names) == [1, 2, 10]
    assert versions_in("accounts", ["accounts-v2", "accounts-v2"]) == [2]
    assert versions_in("a.b", ["aXb", "a.b-v4"]) == [4]  # the name is literal, not a pattern
    assert versions_in("deposits", []) == []


@pytest.mark.parametrize("entry, expected", [
    ({"version": 2}, (True, 2)),
    ({"version": None}, (True, None)),
    ({"version": 0}, (False, None)),
    ({"version": True}, (False, None)),
    ({"version": "2"}, (False, None)),
    ({}, (False, None)),
    (2, (False, None)),
    (None, (False, None)),
])
def test_live_version_reads_only_a_well_formed_entry(entry, expected):
    assert live_version({live_key("accounts"): entry}, "accounts") == expected
    assert live_version({}, "accounts") == (False, None)


# --- plan_tables ---------------------------------------------------------------------------------


def test_a_fresh_app_is_live_at_each_read_models_own_version():
    state = plan(model(version=3), fresh=True)
    assert (state.live, state.building, state.live_table, state.build_table) == (3, None, "accounts-v3", None)


def test_an_existing_table_at_the_modules_version_is_live():
    assert (plan(model(), ["accounts"]).live, plan(model(), ["accounts"]).building) == (1, None)
    state = plan(model(version=2), ["accounts", "accounts-v2"])
    assert (state.live, state.building, state.live_table) == (2, None, "accounts-v2")


def test_a_raised_version_keeps_the_old_one_live_and_builds_the_new_one():
    state = plan(model(version=2), ["accounts", "owners"])
    assert (state.live, state.building) == (1, 2)
    assert (state.live_table, state.build_table) == ("accounts", "accounts-v2")
    # Several older versions: the newest of them answers.
    state = plan(model(version=5), ["accounts", "accounts-v3", "accounts-v2"])
    assert (state.live, state.building, state.build_table) == (3, 5, "accounts-v5")


def test_a_lowered_version_builds_the_old_fold_again():
    state = plan(model(version=1), ["accounts-v2"])
    assert (state.live, state.building, state.live_table, state.build_table) == (2, 1, "accounts-v2", "accounts")


def test_a_brand_new_read_model_in_an_existing_app_has_no_live_version():
    state = plan(model("deposits"), ["accounts", "_accounts_idx"])
    assert (state.live, state.building, state.live_table, state.build_table) == (None, 1, None, "deposits")


def test_the_control_entry_wins_over_the_tables_that_exist():
    m = model(version=2)
    # The build has started: its table exists, but version 1 is still the live one.
    assert plan(m, ["accounts", "accounts-v2"], {live_key("accounts"): {"version": 1}}).live == 1
    # The switch was written: version 2 answers, nothing is built.
    state = plan(m, ["accounts", "accounts-v2"], {live_key("accounts"): {"version": 2}})
    assert (state.live, state.building) == (2, None)
    # A brand-new read model stays "none yet" until its switch, whatever tables exist.
    state = plan(m, ["accounts", "accounts-v2"], {live_key("accounts"): {"version": None}})
    assert (state.live, state.building) == (None, 2)
    # Even in an app that looks fresh.
    assert plan(m, [], {live_key("accounts"): {"version": 1}}, fresh=True).live == 1
    # A malformed entry is ignored.
    assert plan(m, ["accounts"], {live_key("accounts"): {"version": "x"}}).live == 1


def test_plan_tables_plans_each_read_model_on_its_own():
    states = plan_tables(catalog(model("accounts", 2), model("deposits"), model("other")),
                         {}, ["accounts", "other"], False)
    assert {n: (s.live, s.building) for n, s in states.items()} == {
        "accounts": (1, 2), "deposits": (None, 1), "other": (1, None)}


# --- BuildProgress -----------------------------------------------------------------------------


def entries(**partitions) -> dict:
    return {build_key("accounts", 2, int(p[1:])): v for p, v in partitions.items()}


def test_build_progress_reads_only_its_own_builds_entries():
    es = {**entries(p0={"caught_up": True}, p1={"caught_up": False, "remaining": 5}),
          build_key("accounts", 3, 0): {"caught_up": False},       # another version
          build_key("accounts-x", 2, 0): {"caught_up": False},     # another read model
          "projector.build.accounts.v2.pX": {"caught_up": True},   # not a partition
          build_key("accounts", 2, 2): "junk"}                     # not an entry
    progress = BuildProgress.of(es, "accounts", 2)
    assert sorted(progress.partitions) == [0, 1]


def test_caught_up_needs_every_partition_to_say_so():
    assert BuildProgress.of(entries(p0={"caught_up": True}, p1={"caught_up": True}), "accounts", 2).caught_up(2)
    assert not BuildProgress.of(entries(p0={"caught_up": True}), "accounts", 2).caught_up(2)
    assert not BuildProgress.of(entries(p0={"caught_up": True}, p1={"caught_up": "yes"}), "accounts", 2).caught_up(2)
    assert not BuildProgress().caught_up(1)


def test_remaining_sums_the_partitions_not_caught_up():
    progress = BuildProgress.of(entries(p0={"caught_up": True, "remaining": 99},
                                        p1={"caught_up": False, "remaining": 40},
                                        p2={"caught_up": False, "remaining": -3}), "accounts", 2)
    assert progress.remaining(3) == 40
    assert progress.remaining(4) is None  # partition 3 has not reported
    assert BuildProgress.of(entries(p0={"caught_up": False}), "accounts", 2).remaining(1) is None
    assert BuildProgress.of(entries(p0={"caught_up": True}), "accounts", 2).remaining(1) == 0


def test_summary_gives_the_eta_from_the_rates_of_the_partitions_still_building():
    progress = BuildProgress.of(entries(p0={"caught_up": False, "remaining": 300, "rate": 100.0},
                                        p1={"caught_up": False, "remaining": 300, "rate": 200},
                                        p2={"caught_up": True, "rate": 5000}), "accounts", 2)
    assert progress.summary(2, 3) == {"version": 2, "remaining": 600, "eta_seconds": 2.0,
                                      "partitions_caught_up": 1, "rate": 300.0}


def test_summary_eta_unknown_without_a_rate_or_a_report_and_zero_once_caught_up():
    no_rate = BuildProgress.of(entries(p0={"caught_up": False, "remaining": 10}), "accounts", 2).summary(2, 1)
    assert (no_rate["remaining"], no_rate["eta_seconds"]) == (10, None)
    missing = BuildProgress.of(entries(p0={"caught_up": False, "remaining": 10, "rate": 5}), "accounts", 2)
    assert missing.summary(2, 2)["remaining"] is None and missing.summary(2, 2)["eta_seconds"] is None
    done = BuildProgress.of(entries(p0={"caught_up": True}, p1={"caught_up": True}), "accounts", 2).summary(2, 2)
    assert (done["remaining"], done["eta_seconds"], done["partitions_caught_up"]) == (0, 0.0, 2)
    assert BuildProgress().summary(1, 2)["partitions_caught_up"] == 0


# --- VERSION in the catalog --------------------------------------------------------------------

SOURCE = """
NAME = "things"
HANDLES = ("Happened",)

def fold(state, event):
    return {"n": 1}
"""

REKEYED = """
NAME = "groups"
SOURCE = "things"

def key(row):
    return "all"

def contribution(row):
    return {"n": 1}
"""


@pytest.fixture
def folder(tmp_path: Path, clean_table_modules) -> Path:
    d = tmp_path / "lc_tables"
    d.mkdir()
    return d


def load(folder: Path, source: str, extra: str = "", filename: str = "things.py"):
    (folder / filename).write_text(textwrap.dedent(source) + extra)
    return load_catalog(folder)


def test_version_defaults_to_1_and_names_the_table(folder):
    [m] = load(folder, SOURCE).models
    assert (m.version, m.table) == (1, "things")
    [m] = load(folder, SOURCE, "VERSION = 3\n").models
    assert (m.version, m.table) == (3, "things-v3")


@pytest.mark.parametrize("value", ["0", "-1", "'2'", "2.0", "True", "None", "1_000_001"])
def test_a_bad_version_is_refused_naming_the_module(folder, value):
    with pytest.raises(ReadModelError) as info:
        load(folder, SOURCE, f"VERSION = {value}\n")
    assert "things.py" in str(info.value) and "VERSION must be an integer" in str(info.value)


def test_a_re_keyed_read_model_has_no_version(folder):
    (folder / "things.py").write_text(textwrap.dedent(SOURCE))
    with pytest.raises(ReadModelError) as info:
        load(folder, REKEYED, "VERSION = 2\n", filename="groups.py")
    assert "groups.py" in str(info.value) and "no VERSION" in str(info.value)
    catalog = load(folder, REKEYED, "VERSION = 1\n", filename="groups.py")
    assert [d.name for d in catalog.derived] == ["groups"]


# --- tables_of with states -------------------------------------------------------------------


def test_tables_of_keeps_the_live_and_the_build_table_each_with_its_index_table():
    base = Catalog(models=[model("accounts", 2, indexes={"owner": lambda v: v["owner"]}), model("deposits"),
                           model("plain", 3)], derived=[], modules=[])
    states = plan_tables(base, {}, ["accounts", "_accounts_idx", "plain-v3"], False)
    tables = dict(tables_of(base, states))
    for name in ("accounts", "_accounts_idx", "accounts-v2", "_accounts-v2_idx", "deposits", "plain-v3"):
        assert name in tables, name
    assert "building" in tables["accounts-v2"] and "building" not in tables["accounts"]
    assert "(version 1, building)" in tables["deposits"]
    assert index_table("accounts-v2") == "_accounts-v2_idx"
    assert not {"plain", "_deposits_idx", "_plain-v3_idx"} & set(tables)
    # Without states, each read model is live at its own version.
    plain = [name for name, _ in tables_of(base)]
    assert "accounts-v2" in plain and "_accounts-v2_idx" in plain and "accounts" not in plain


def test_tables_of_after_the_switch_keeps_only_the_new_version():
    base = catalog(model("accounts", 2, indexes={"owner": lambda v: v["owner"]}))
    states = plan_tables(base, {live_key("accounts"): {"version": 2}}, ["accounts", "accounts-v2"], False)
    names = [n for n, _ in tables_of(base, states)]
    assert "accounts-v2" in names and "_accounts-v2_idx" in names
    assert "accounts" not in names and "_accounts_idx" not in names


def test_table_state_follows_the_models_version():
    m = model(version=2)
    state = TableState(m, 1)
    assert state.building == 2
    state.live = 2
    assert (state.building, state.build_table, state.live_table) == (None, None, "accounts-v2")
    assert TableState(dataclasses.replace(m, version=1), None).build_table == "accounts"
