"""projector.runtime.stores: the same tests on the in-memory store and on RocksDB through Faust.

The ``store`` fixture gives each test a :class:`MemoryStore` and a
:class:`FaustStore` over real RocksDB partition databases in a temporary
directory (no broker: Faust opens a partition's database on first use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import faust
import pytest

from projector.runtime import stores
from projector.runtime.stores import FaustStore, MemoryStore, WritableStore, rocksdb_options

TABLES = ("rows", "other")
PARTITIONS = 3


def faust_store(datadir: Path) -> FaustStore:
    """Faust tables as the worker builds them (projector.runtime.app), never started."""
    app = faust.App(
        "stores-test",
        broker="kafka://127.0.0.1:1",  # never contacted
        store="rocksdb://",
        datadir=str(datadir),
        autodiscover=False,
        topic_partitions=PARTITIONS,
    )
    tables = {
        name: app.Table(name, partitions=PARTITIONS, key_type=bytes, value_type=bytes, options=rocksdb_options())
        for name in TABLES
    }
    return FaustStore(tables)


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WritableStore]:
    if request.param == "memory":
        yield MemoryStore(app_id="stores-test")
        return
    s = faust_store(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_both_stores_have_the_whole_interface():
    # Protocol membership by hand: typing.Protocol's isinstance needs @runtime_checkable.
    for cls in (MemoryStore, FaustStore):
        for name in ("get", "scan", "write", "clear_partition", "changelog_topic", "changelog_offset"):
            assert callable(getattr(cls, name, None)), (cls, name)


def test_get_of_a_missing_key_is_none(store):
    assert store.get("rows", 0, b"nope") is None
    store.write("rows", 0, {b"a": b"1"}, None)
    assert store.get("rows", 0, b"nope") is None
    assert store.get("rows", 1, b"a") is None


def test_write_then_get(store):
    store.write("rows", 1, {b"a": b"1", b"b": b"\x00\xff"}, None)
    assert store.get("rows", 1, b"a") == b"1"
    assert store.get("rows", 1, b"b") == b"\x00\xff"
    store.write("rows", 1, {b"a": b"2"}, None)
    assert store.get("rows", 1, b"a") == b"2"
    assert store.get("rows", 1, b"b") == b"\x00\xff"


def test_none_deletes(store):
    store.write("rows", 0, {b"a": b"1", b"b": b"2"}, None)
    store.write("rows", 0, {b"a": None, b"never-there": None}, None)
    assert store.get("rows", 0, b"a") is None
    assert store.get("rows", 0, b"never-there") is None
    assert list(store.scan("rows", 0, b"")) == [(b"b", b"2")]


def test_scan_by_prefix_is_sorted_and_starts_at_start(store):
    store.write("rows", 2, {b"k\x00c": b"3", b"k\x00a": b"1", b"j": b"0", b"k\x00b": b"2", b"l": b"9"}, None)
    assert list(store.scan("rows", 2, b"k\x00")) == [(b"k\x00a", b"1"), (b"k\x00b", b"2"), (b"k\x00c", b"3")]
    assert list(store.scan("rows", 2, b"k\x00", start=b"k\x00b")) == [(b"k\x00b", b"2"), (b"k\x00c", b"3")]
    assert list(store.scan("rows", 2, b"k\x00", start=b"k\x00bb")) == [(b"k\x00c", b"3")]
    assert list(store.scan("rows", 2, b"k\x00", start=b"k\x00d")) == []
    # A start before the prefix starts at the prefix.
    assert [k for k, _ in store.scan("rows", 2, b"k\x00", start=b"a")] == [b"k\x00a", b"k\x00b", b"k\x00c"]
    assert list(store.scan("rows", 2, b"m")) == []
    assert [k for k, _ in store.scan("rows", 2, b"")] == [b"j", b"k\x00a", b"k\x00b", b"k\x00c", b"l"]
    assert list(store.scan("rows", 1, b"")) == []  # a partition never written


def test_partitions_and_tables_are_kept_apart(store):
    store.write("rows", 0, {b"a": b"p0", b"x": b"only-0"}, 5)
    store.write("rows", 1, {b"a": b"p1"}, 7)
    store.write("other", 0, {b"a": b"other-p0"}, None)
    assert store.get("rows", 0, b"a") == b"p0"
    assert store.get("rows", 1, b"a") == b"p1"
    assert store.get("other", 0, b"a") == b"other-p0"
    assert store.get("rows", 1, b"x") is None
    assert list(store.scan("rows", 1, b"")) == [(b"a", b"p1")]
    assert store.changelog_offset("rows", 0) == 5
    assert store.changelog_offset("rows", 1) == 7
    assert store.changelog_offset("other", 0) is None


def test_clear_partition_counts_and_empties_only_that_partition(store):
    store.write("rows", 0, {b"a": b"1", b"b": b"2", b"c": b"3"}, 12)
    store.write("rows", 1, {b"a": b"kept"}, 4)
    store.write("other", 0, {b"a": b"kept too"}, 8)
    assert store.clear_partition("rows", 0) == 3  # rows only: not the stored offset
    assert list(store.scan("rows", 0, b"")) == []
    assert store.get("rows", 0, b"a") is None
    assert store.changelog_offset("rows", 0) is None
    assert store.get("rows", 1, b"a") == b"kept"
    assert store.get("other", 0, b"a") == b"kept too"
    assert store.changelog_offset("rows", 1) == 4
    assert store.changelog_offset("other", 0) == 8
    assert store.clear_partition("rows", 0) == 0
    assert store.clear_partition("rows", 2) == 0  # never written
    store.write("rows", 0, {b"z": b"again"}, 13)  # usable again after it
    assert list(store.scan("rows", 0, b"")) == [(b"z", b"again")]
    assert store.changelog_offset("rows", 0) == 13


def test_changelog_offset_is_stored_with_the_rows_and_never_read_as_one(store):
    assert store.changelog_offset("rows", 0) is None
    store.write("rows", 0, {b"a": b"1"}, 41)
    assert store.changelog_offset("rows", 0) == 41
    store.write("rows", 0, {b"b": b"2"}, None)  # no offset: the stored one stays
    assert store.changelog_offset("rows", 0) == 41
    store.write("rows", 0, {}, 42)  # an offset alone
    assert store.changelog_offset("rows", 0) == 42
    assert [k for k, _ in store.scan("rows", 0, b"")] == [b"a", b"b"]
    assert [k for k, _ in store.scan("rows", 0, b"__faust")] == []
    assert store.get("rows", 0, b"__faust\x00offset__") is None


def test_changelog_topic_is_fausts_name_for_it(store):
    assert store.changelog_topic("rows") == "stores-test-rows-changelog"
    assert store.changelog_topic("other") == "stores-test-other-changelog"


def test_faust_store_keeps_its_rows_and_offset_across_a_reopen(tmp_path):
    first = faust_store(tmp_path)
    try:
        first.write("rows", 1, {b"a": b"1", b"b": None}, 9)
    finally:
        first.close()
    second = faust_store(tmp_path)
    try:
        assert list(second.scan("rows", 1, b"")) == [(b"a", b"1")]
        assert second.changelog_offset("rows", 1) == 9
    finally:
        second.close()


def test_every_partition_database_of_a_worker_shares_one_cache_and_one_memtable_budget(tmp_path):
    cache, memtables = stores._shared_memory()
    assert memtables.get_buffer_size() == stores.SHARED_MEMTABLES
    before = memtables.get_usage()
    s = faust_store(tmp_path)
    try:
        for table in TABLES:
            for partition in range(PARTITIONS):
                s.write(table, partition, {b"k%05d" % i: b"v" * 100 for i in range(2_000)}, 1)
        # Six databases' memtables, counted in the one budget (RocksDB allocates them in blocks).
        assert memtables.get_usage() >= before + 6 * 2_000 * 100
        assert memtables.get_usage() <= stores.SHARED_MEMTABLES
    finally:
        s.close()
