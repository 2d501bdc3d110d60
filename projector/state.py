"""Read-model rows in a Faust changelog-backed RocksDB table.

This is the one place that touches Faust's table and store internals. Rows
are written straight into the partition's RocksDB database and sent to the
changelog with the partition given explicitly, so a batch that spans
partitions never writes a key into the wrong partition (Faust's
``table[key] = value`` uses whichever event is current).
"""

from __future__ import annotations

from typing import Any, Optional

import orjson

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


class TableState:
    """Rows ``{"version", "value"}`` of one read model, keyed by UTF-8 bytes."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @property
    def name(self) -> str:
        return self.table.name

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> Optional[dict[str, Any]]:
        raw = self._db(partition).get(key)
        return orjson.loads(raw) if raw is not None else None

    def put(self, partition: int, key: bytes, row: dict[str, Any]) -> None:
        raw = orjson.dumps(row)
        self._db(partition).put(key, raw)
        self.table.data._key_index[key] = partition
        self.table.send_changelog(partition, key, raw, key_serializer="raw", value_serializer="raw")
