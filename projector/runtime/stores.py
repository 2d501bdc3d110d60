"""Rows of the tables, by table, partition and key: on RocksDB through Faust, or in memory.

:class:`WritableStore` is the one interface: the engine's read half
(:class:`projector.core.engine.Store`: ``get``, ``scan``) and the worker's
write half (``write``, ``clear_partition``, the changelog topic and offset).
:class:`FaustStore` implements it over Faust's changelog-backed RocksDB
tables, :class:`MemoryStore` in memory (tests, tools); the store tests run on
both.

FaustStore reaches Faust's stores through :mod:`projector.runtime.faust_patches`.
The engine's writes go straight into each partition's RocksDB database, in
one ``WriteBatch`` per table and partition together with the changelog offset
they reach, and to the changelog with the partition given explicitly, so a
batch that spans partitions never writes a key into the wrong partition
(Faust's ``table[key] = value`` uses whichever event is current).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any, Iterator, Mapping, Optional, Protocol

import rocksdict
from faust.stores.rocksdb import Store as FaustRocksDBStore
from faust.types import TP

from projector.core.engine import Store
from projector.runtime.faust_patches import forget_key, open_partition_dbs, partition_db

#: RocksDB sizes per partition database. rocksdict's defaults through Faust
#: reserve a 2 GiB block cache and 3 x 64 MiB write buffers for *each* one.
ROCKSDB_OPTIONS: dict[str, int] = {
    "block_cache_size": 8 * 1024 * 1024,
    "block_cache_compressed_size": 0,
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
    "max_open_files": 256,
}


def rocksdb_options() -> dict[str, Any]:
    # A fresh dict per table: Faust's Store pops keys out of the dict it is given.
    return dict(ROCKSDB_OPTIONS, driver="rocksdict")


#: What every partition database of a worker shares: one block cache, and one
#: budget for all memtables (RocksDB flushes the writing database's memtable
#: when the total nears it). Without them each of the worker's databases (one
#: per table and partition: 56 for the demo's tables on 8 partitions) keeps
#: its own 8 MiB cache and up to 16 MiB of memtables.
SHARED_BLOCK_CACHE = 32 * 1024 * 1024
SHARED_MEMTABLES = 96 * 1024 * 1024
_shared: Optional[tuple[Any, Any]] = None


def _shared_memory() -> tuple[Any, Any]:
    global _shared
    if _shared is None:
        _shared = (rocksdict.Cache(SHARED_BLOCK_CACHE), rocksdict.WriteBufferManager(SHARED_MEMTABLES, False))
    return _shared


def share_rocksdb_memory(store: Any) -> None:
    """Open the partition databases of a Faust RocksDB ``store`` with the worker's shared cache and memtable budget.

    Replaces the store's ``rocksdb_options.as_options`` with Faust's own
    options for rocksdict, the shared cache and write buffer manager set.
    """
    conf = store.rocksdb_options

    def as_options() -> rocksdict.Options:
        cache, memtables = _shared_memory()
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(conf.max_open_files)
        options.set_write_buffer_size(conf.write_buffer_size)
        options.set_target_file_size_base(conf.target_file_size_base)
        options.set_max_write_buffer_number(conf.max_write_buffer_number)
        options.set_write_buffer_manager(memtables)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(conf.bloom_filter_size, block_based=True)
        table.set_block_cache(cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options

    conf.as_options = as_options


class WritableStore(Store, Protocol):
    """The rows of every table partition, and the changelog offset each one has reached.

    ``get`` and ``scan`` (from :class:`Store`) see rows only: never the stored
    changelog offset. ``scan`` yields the keys with ``prefix`` in key order,
    from ``start`` if given (a key with that prefix).
    """

    def write(
        self, table: str, partition: int, items: Mapping[bytes, Optional[bytes]], changelog_offset: Optional[int]
    ) -> None:
        """Write ``items`` (``None`` deletes) and, if given, the changelog offset they reach, atomically."""
        ...

    def clear_partition(self, table: str, partition: int) -> int:
        """Delete every row of one table partition and its changelog offset; returns the rows deleted."""
        ...

    def changelog_topic(self, table: str) -> str:
        """The name of the table's changelog topic."""
        ...

    def changelog_offset(self, table: str, partition: int) -> Optional[int]:
        """The changelog offset stored with the partition's rows by :meth:`write`, if any."""
        ...


#: Where Faust keeps each partition database's changelog offset, among the rows.
OFFSET_KEY: bytes = FaustRocksDBStore.offset_key


def _scan_from(prefix: bytes, start: Optional[bytes]) -> bytes:
    return prefix if start is None or start < prefix else start


class FaustStore:
    """:class:`WritableStore` over Faust tables (``store="rocksdb://"``), by table name."""

    def __init__(self, tables: dict[str, Any]) -> None:
        self.tables = tables
        for table in tables.values():
            share_rocksdb_memory(table.data)

    def _store(self, table: str) -> Any:
        return self.tables[table].data

    def _db(self, table: str, partition: int) -> Any:
        return partition_db(self._store(table), partition)

    def changelog_topic(self, table: str) -> str:
        return self.tables[table].changelog_topic.get_topic_name()

    def changelog_offset(self, table: str, partition: int) -> Optional[int]:
        # Where Faust's recovery reads it (``Store.persisted_offset``).
        return self._store(table).persisted_offset(TP(self.changelog_topic(table), partition))

    def get(self, table: str, partition: int, key: bytes) -> Optional[bytes]:
        if key == OFFSET_KEY:
            return None  # Faust's offset, not a row
        return self._db(table, partition).get(key)

    def scan(
        self, table: str, partition: int, prefix: bytes, start: Optional[bytes] = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys with ``prefix`` in order, from ``start`` (a key with that prefix) if given."""
        for key, value in self._db(table, partition).items(from_key=_scan_from(prefix, start)):
            if not key.startswith(prefix):
                break
            if key != OFFSET_KEY:
                yield key, value

    def clear_partition(self, table: str, partition: int) -> int:
        """Delete every row of one table partition, and its changelog offset; returns the rows deleted."""
        store = self._store(table)
        db = partition_db(store, partition)
        deleted = 0
        batch = rocksdict.WriteBatch(raw_mode=True)
        for n, key in enumerate(db.keys(), 1):
            batch.delete(key)
            if key != OFFSET_KEY:
                deleted += 1
            forget_key(store, key)
            if n % 10_000 == 0:
                db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        db.write(batch)
        return deleted

    def write(
        self, table: str, partition: int, items: Mapping[bytes, Optional[bytes]], changelog_offset: Optional[int]
    ) -> None:
        """Write ``items`` (``None`` deletes) and the changelog offset they reach, atomically."""
        # Faust's per-key partition index (``store._key_index``, a locked LRU
        # cache) serves only its own ``table[key]`` API, which projector never
        # uses: every read names its partition. It is not kept up to date here.
        store = self._store(table)
        batch = rocksdict.WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete
        for key, value in items.items():
            if value is None:
                delete(key)
            else:
                put(key, value)
        if changelog_offset is not None:
            batch.put(OFFSET_KEY, str(changelog_offset).encode())
        partition_db(store, partition).write(batch)

    def close(self) -> None:
        """Close every open partition database (Faust's own ``stop`` leaves them to the garbage collector)."""
        for table in self.tables.values():
            dbs = open_partition_dbs(table.data)
            for db in dbs.values():
                db.close()
            dbs.clear()


class MemoryStore:
    """:class:`WritableStore` in memory: (table, partition) -> {key: bytes}, with its keys kept sorted."""

    def __init__(self, app_id: str = "memory") -> None:
        self.app_id = app_id
        self.data: dict[tuple[str, int], dict[bytes, bytes]] = defaultdict(dict)
        self.sorted_keys: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self.offsets: dict[tuple[str, int], int] = {}

    def changelog_topic(self, table: str) -> str:
        # Faust's name for it.
        return f"{self.app_id}-{table}-changelog"

    def changelog_offset(self, table: str, partition: int) -> Optional[int]:
        return self.offsets.get((table, partition))

    def get(self, table: str, partition: int, key: bytes) -> Optional[bytes]:
        rows = self.data.get((table, partition))
        return rows.get(key) if rows else None

    def scan(
        self, table: str, partition: int, prefix: bytes, start: Optional[bytes] = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys with ``prefix`` in order, from ``start`` (a key with that prefix) if given.

        The rows are read before the first one is yielded, as a RocksDB
        iterator reads one snapshot: writes meanwhile do not show.
        """
        slot = (table, partition)
        keys = self.sorted_keys.get(slot)
        if not keys:
            return iter(())
        rows = self.data[slot]
        i = bisect.bisect_left(keys, _scan_from(prefix, start))
        out = []
        while i < len(keys) and keys[i].startswith(prefix):
            out.append((keys[i], rows[keys[i]]))
            i += 1
        return iter(out)

    def put(self, table: str, partition: int, key: bytes, value: Optional[bytes]) -> None:
        """Write one row (``None`` deletes)."""
        slot = (table, partition)
        keys = self.sorted_keys[slot]
        rows = self.data[slot]
        if value is None:
            if key in rows:
                del rows[key]
                keys.pop(bisect.bisect_left(keys, key))
            return
        if key not in rows:
            bisect.insort(keys, key)
        rows[key] = value

    def write(
        self, table: str, partition: int, items: Mapping[bytes, Optional[bytes]], changelog_offset: Optional[int]
    ) -> None:
        for key, value in items.items():
            self.put(table, partition, key, value)
        if changelog_offset is not None:
            self.offsets[(table, partition)] = changelog_offset

    def clear_partition(self, table: str, partition: int) -> int:
        slot = (table, partition)
        self.offsets.pop(slot, None)
        self.sorted_keys.pop(slot, None)
        return len(self.data.pop(slot, {}))
