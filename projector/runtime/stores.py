"""Rows in Faust's changelog-backed RocksDB tables.

This is the one place that touches Faust's table and store internals. The
engine's writes go straight into each partition's RocksDB database, in one
``WriteBatch`` per table and partition together with the changelog offset
they reach, and to the changelog with the partition given explicitly, so a
batch that spans partitions never writes a key into the wrong partition
(Faust's ``table[key] = value`` uses whichever event is current).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import rocksdict

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


class FaustStore:
    """The engine's :class:`projector.engine.Store` over Faust tables, by table name."""

    def __init__(self, tables: dict[str, Any]) -> None:
        self.tables = tables

    def _store(self, table: str) -> Any:
        return self.tables[table].data

    def _db(self, table: str, partition: int) -> Any:
        return self._store(table)._db_for_partition(partition)

    def changelog_topic(self, table: str) -> str:
        return self.tables[table].changelog_topic.get_topic_name()

    def get(self, table: str, partition: int, key: bytes) -> Optional[bytes]:
        return self._db(table, partition).get(key)

    def scan(
        self, table: str, partition: int, prefix: bytes, start: Optional[bytes] = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys with ``prefix`` in order, from ``start`` (a key with that prefix) if given."""
        for key, value in self._db(table, partition).items(from_key=start or prefix):
            if not key.startswith(prefix):
                break
            yield key, value

    def clear_partition(self, table: str, partition: int) -> int:
        """Delete every row of one table partition, and its changelog offset; returns the rows deleted."""
        store = self._store(table)
        db = store._db_for_partition(partition)
        deleted = 0
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in db.keys():
            batch.delete(key)
            deleted += 1
            store._key_index.pop(key, None)
            if deleted % 10_000 == 0:
                db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        db.write(batch)
        return deleted

    def write(self, table: str, partition: int, items: dict[bytes, Optional[bytes]], changelog_offset: Optional[int]) -> None:
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
            batch.put(store.offset_key, str(changelog_offset).encode())
        store._db_for_partition(partition).write(batch)
