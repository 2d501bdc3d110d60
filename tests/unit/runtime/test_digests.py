"""A RocksDB copy's digest: its rows without Faust's offset key, and offset = the stored one + 1."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import rocksdict

from projector.core.digest import digest_rows
from projector.runtime import digests
from projector.runtime.digests import copy_digest, flush_changelog_buffers
from projector.runtime.stores import OFFSET_KEY


class OnePartitionStore:
    """What ``partition_db`` reads of a Faust RocksDB store: ``_db_for_partition``."""

    def __init__(self, db):
        self.db = db

    def _db_for_partition(self, partition):
        return self.db


def test_a_copy_digest_leaves_the_offset_key_out_and_says_the_next_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "YIELD_EVERY", 3)  # the scan lets the loop run in between: same answer
    db = rocksdict.Rdict(str(tmp_path / "p0.db"), options=rocksdict.Options(raw_mode=True))
    try:
        store = OnePartitionStore(db)
        assert asyncio.run(copy_digest(store, 0)) == {"offset": 0, "rows": 0, "digest": "0" * 16}
        rows = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(10)]
        for key, value in rows:
            db[key] = value
        db[OFFSET_KEY] = b"41"
        count, digest = digest_rows(rows)
        assert asyncio.run(copy_digest(store, 0)) == {"offset": 42, "rows": count, "digest": digest}
    finally:
        db.close()


def test_the_changelog_buffers_are_applied_when_they_hold_records():
    flushed = []
    recovery = SimpleNamespace(buffers={"t": []}, flush_buffers=lambda: flushed.append(True))
    app = SimpleNamespace(tables=SimpleNamespace(recovery=recovery))
    assert flush_changelog_buffers(app) == 0 and not flushed
    recovery.buffers["t"].extend([1, 2])
    assert flush_changelog_buffers(app) == 2 and flushed
