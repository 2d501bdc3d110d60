"""No record the engine plans is over its record limit: segments, parked records, dead letters, repartition messages.

The engine runs with a small limit (``LIMIT`` bytes), so the tests stay small;
every record of every plan (key, value and headers) must fit in it, and what
does not fit is kept by reference (``projector.source``) instead of copied.
"""

from __future__ import annotations

import orjson
import pytest
from enginekit import PARTITIONS, REPARTITION, Driver, deposited, group_by, headers, opened, values

from projector.core import index as agg
from projector.core.engine import INDEX, Plan, answer_key
from projector.core.partitioning import partition_for

LIMIT = 20_000


@pytest.fixture
def d() -> Driver:
    driver = Driver()
    driver.engine.max_record = LIMIT
    return driver


def record_sizes(plan: Plan) -> list[int]:
    """key + value + headers of every record the plan writes or sends."""
    sizes = [len(k) + len(v or b"") for items in plan.writes.values() for k, v in items.items()]
    sizes += [len(s.key or b"") + len(s.value or b"") + sum(len(k) + len(v) for k, v in s.headers) for s in plan.sends]
    return sizes


def all_fit(d: Driver) -> bool:
    return all(size <= LIMIT for plan in d.plans for size in record_sizes(plan))


def memo(version: int, aid: str, size: int) -> dict:
    """A deposit of 1 whose envelope is about ``size`` bytes (a long memo in its data)."""
    e = deposited(aid, version, 1)
    e["data"]["memo"] = "m" * size
    return e


def test_many_events_of_one_aggregate_are_split_into_segments_under_the_limit(d):
    d.run([d.record(opened("acc-1"))])
    d.run([d.record(memo(v, "acc-1", 3_000)) for v in range(2, 40)])  # ~114 KB of events in one batch
    assert all_fit(d)
    assert [e["version"] for e in d.indexed_events("acc-1")] == list(range(1, 40))
    assert d.row("accounts", "acc-1")["value"]["balance"] == 38


def test_an_event_too_large_to_index_is_dead_lettered_by_reference_and_others_go_on(d):
    d.run([d.record(opened("acc-1")), d.record(opened("acc-2"))])
    big = d.record(memo(2, "acc-1", 30_000))
    d.run([big, d.record(deposited("acc-2", 2, 5))])
    assert all_fit(d)
    [dl] = d.deadletters
    h = headers(dl)
    assert h["projector.reason"] == "too_large"
    assert h["projector.source"] == f"events/{big.partition}/{big.offset}"
    assert (dl.key, dl.value, h["projector.truncated"]) == (b"acc-1", b"", str(len(big.value)))
    # Not applied; the other aggregate is.
    assert d.meta_state("acc-1") == (1, False)
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1]
    assert d.row("accounts", "acc-2")["value"]["balance"] == 5
    # The next event is a gap, as after a fold that raises; a release past the big one goes on.
    d.run([d.record(deposited("acc-1", 3, 7))])
    assert headers(d.deadletters[-1])["projector.reason"] == "version_gap"
    assert d.meta_state("acc-1") == (1, True)
    d.run(commands=[d.release("acc-1", skip_to=3)])
    assert d.meta_state("acc-1") == (3, False)
    assert d.row("accounts", "acc-1")["value"]["balance"] == 7
    assert all_fit(d)


def test_a_parked_record_keeps_its_events_but_not_the_raw_value_again(d):
    d.run([d.record(opened("acc-1"))])
    gap = d.record(memo(3, "acc-1", 12_000))  # alone it fits; events + raw value do not
    d.run([gap])
    assert all_fit(d)
    dl = d.deadletters[-1]
    assert headers(dl)["projector.reason"] == "version_gap"
    assert dl.value == gap.value, "a dead letter that fits keeps the original value"
    [parked] = d.parked("acc-1")
    assert parked["value"] is None and parked["size"] == len(gap.value)
    assert parked["source"] == f"events/{gap.partition}/{gap.offset}"
    d.run(commands=[d.release("acc-1", skip_to=3)])
    assert d.meta_state("acc-1") == (3, False)
    assert d.row("accounts", "acc-1")["value"]["balance"] == 1
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, 3]


def test_a_parked_record_not_kept_whose_release_fails_is_dead_lettered_by_reference(d):
    # A fold error at release time: the dead letter refers to the source, the value was not kept.
    d.run([d.record(opened("acc-1"))])
    bad = memo(3, "acc-1", 12_000)
    bad["type"] = "MoneyWithdrawn"
    bad["data"]["amount"] = 100  # more than the balance: the fold raises
    record = d.record(bad)
    d.run([record])
    d.run(commands=[d.release("acc-1", skip_to=3)])
    dl = d.deadletters[-1]
    h = headers(dl)
    assert h["projector.reason"] == "fold_error"
    assert (dl.value, h["projector.truncated"]) == (b"", str(len(record.value)))
    assert h["projector.source"] == f"events/{record.partition}/{record.offset}"
    assert all_fit(d)


def test_a_parked_record_too_large_to_keep_is_dead_lettered_as_too_large(d):
    d.run([d.record(opened("acc-1"))])
    d.run([d.record(deposited("acc-1", 3, 1))])  # a gap: parked
    big = d.record(memo(4, "acc-1", 30_000))
    d.run([big, d.record(deposited("acc-1", 5, 2))])
    assert all_fit(d)
    assert [headers(s)["projector.reason"] for s in d.deadletters] == ["version_gap", "too_large", "parked"]
    assert headers(d.deadletters[1])["projector.truncated"] == str(len(big.value))
    assert [p["events"][0]["version"] for p in d.parked("acc-1")] == [3, 5]
    # A release re-parks at the missing event; skipping past it applies the rest.
    d.run(commands=[d.release("acc-1", skip_to=5)])
    assert d.meta_state("acc-1") == (5, False)
    assert d.row("accounts", "acc-1")["value"]["balance"] == 2


def test_a_bad_record_too_large_for_a_dead_letter_is_sent_without_its_value(d):
    raw = d.raw(b"junk", b"{" + b"x" * 50_000)
    d.run([raw])
    [dl] = d.deadletters
    h = headers(dl)
    assert h["projector.reason"] == "invalid_json"
    assert (dl.key, dl.value, h["projector.truncated"]) == (b"junk", b"", str(len(raw.value)))
    assert h["projector.source"] == f"events/{raw.partition}/{raw.offset}"
    assert len(h["projector.error"]) < 5000
    assert all_fit(d)


def test_a_small_bad_record_keeps_its_value_and_has_no_truncated_header(d):
    d.run([d.raw(b"junk", b"{nope")])
    [dl] = d.deadletters
    assert dl.value == b"{nope" and "projector.truncated" not in headers(dl)


def test_repartition_messages_of_one_group_are_split_under_the_limit(d):
    accounts = [f"acc-{i:04d}" for i in range(400)]
    d.run([d.record(opened(aid, f"owner-{i}", "EUR")) for i, aid in enumerate(accounts)], derived=False)
    eur = [r for r in d.repartitioned if r.topic == REPARTITION["currencies"]]
    assert len(eur) > 1, "400 members' changes do not fit in one message"
    assert all(len(r.key) + len(r.value) <= LIMIT for r in eur)
    assert sum(len(orjson.loads(r.value)["changes"]) for r in eur) == 400
    d.flush_derived()
    assert values(d.store.table("currencies")) == group_by(d.store.table("accounts"), "currency")
    assert d.store.table("currencies")["EUR"]["value"]["accounts"] == 400
    assert all_fit(d)


def test_index_rows_written_by_the_engine_stay_under_the_limit_after_a_release(d):
    # A release writes every parked record's events into new segments, in one batch.
    d.run([d.record(opened("acc-1"))])
    d.run([d.record(memo(v, "acc-1", 4_000)) for v in range(3, 20)])
    assert len(d.parked("acc-1")) == 17
    d.run(commands=[d.release("acc-1", skip_to=3)])
    assert d.meta_state("acc-1") == (19, False)
    index_writes = [len(k) + len(v or b"") for p in d.plans for (t, _), items in p.writes.items() if t == INDEX
                    for k, v in items.items()]
    assert max(index_writes) <= LIMIT
    assert [e["version"] for e in d.indexed_events("acc-1")] == [1, *range(3, 20)]


def test_segments_take_a_byte_limit_below_the_default():
    raws = [(v, b'{"version":%d,"pad":"' % v + b"p" * 900 + b'"}') for v in range(1, 11)]
    segments = agg.Meta().segments(raws, 2_000)
    assert all(len(value) <= 2_000 for _, value in segments)
    assert [e["version"] for _, value in segments for e in orjson.loads(value)] == list(range(1, 11))



def test_a_command_answer_too_large_to_keep_is_kept_without_its_events(d):
    # Events that carry a command id (any producer may set one) record the command's answer.
    d.run([d.record(opened("acc-1"))])
    small = deposited("acc-1", 2, 1)
    small["metadata"] = {"command_id": "c-small"}
    big_pair = [memo(3, "acc-1", 11_000), memo(4, "acc-1", 11_000)]  # each fits; the answer with both does not
    for e in big_pair:
        e["metadata"] = {"command_id": "c-big"}
    d.run([d.record(small), d.record(big_pair)])
    assert d.meta_state("acc-1") == (4, False)
    assert all_fit(d)
    p = d.store.get("_commands", partition_for(b"acc-1", PARTITIONS), answer_key("acc-1", "c-small"))
    assert [e["version"] for e in orjson.loads(p)["body"]["events"]] == [2]
    answer = orjson.loads(d.store.get("_commands", partition_for(b"acc-1", PARTITIONS), answer_key("acc-1", "c-big")))
    assert answer["body"] | {"events": None} == {"command_id": "c-big", "aggregate_id": "acc-1", "version": 4,
                                                   "events": None}
    assert answer["body"]["events"] == []


MEMO_LOG = '''
NAME = "memo_log"
DESCRIPTION = "every deposit's memo, in one row: it grows without bound"
HANDLES = ("MoneyDeposited",)
INITIAL = {"memos": []}


def fold(state, event):
    return {"memos": state["memos"] + [event.data.get("memo", "")]}
'''


@pytest.fixture
def growing(tmp_path, clean_table_modules) -> Driver:
    import shutil

    from enginekit import TABLES_DIR

    from projector.core.catalog import load_catalog

    folder = tmp_path / "tables"
    folder.mkdir()
    shutil.copy(TABLES_DIR / "accounts.py", folder / "sz_accounts.py")
    (folder / "sz_memo_log.py").write_text(MEMO_LOG)
    driver = Driver(load_catalog(folder), repartition_topics={})
    driver.engine.max_record = LIMIT
    return driver


def test_a_record_that_would_grow_a_row_over_the_limit_is_too_large_and_the_batch_goes_on(growing):
    d = growing
    d.run([d.record(opened("acc-1")), d.record(opened("acc-2"))])
    # Five 6 KB memos in one batch: the row would reach ~30 KB after the fourth.
    batch = [d.record(memo(v, "acc-1", 6_000)) for v in range(2, 7)] + [d.record(deposited("acc-2", 2, 9))]
    d.run(batch)
    assert all_fit(d)
    assert [headers(s)["projector.reason"] for s in d.deadletters] == ["too_large", "version_gap"]
    assert "memo_log" in headers(d.deadletters[0])["projector.error"]
    assert headers(d.deadletters[0])["projector.source"] == f"events/{batch[3].partition}/{batch[3].offset}"
    # Applied up to the last record whose rows fit, every model alike; the metrics count it once.
    assert d.meta_state("acc-1") == (4, True)
    assert d.row("accounts", "acc-1")["version"] == 4 and len(d.row("memo_log", "acc-1")["value"]["memos"]) == 3
    assert d.row("accounts", "acc-2")["value"]["balance"] == 9
    assert d.engine.metrics.events_applied["accounts"] == 2 + 3 + 1
    assert d.engine.metrics.records_seen == 2 + 6
    assert dict(d.engine.metrics.deadletters) == {"too_large": 1, "version_gap": 1}
