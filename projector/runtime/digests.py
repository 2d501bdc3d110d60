"""The digest of each table partition copy this worker holds, active or standby (``GET /tables/{table}/digest``).

A copy's digest (:mod:`projector.core.digest`) is read from its RocksDB
database with one iterator: RocksDB gives an iterator a consistent view as
of its creation, and the changelog offset the copy has applied is stored
among the rows (Faust's offset key, written in the same ``WriteBatch`` as the
rows by the sink and by Faust's changelog restore). So the rows and the
offset read together always belong together, even though the scan lets the
event loop run every :data:`YIELD_EVERY` rows (about 15 ms of hashing per
10,000 rows).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from projector.core.digest import Digest
from projector.runtime.faust_patches import active_partitions, partition_db
from projector.runtime.stores import OFFSET_KEY

log = logging.getLogger(__name__)

#: Rows hashed between two chances for the event loop to serve something else.
YIELD_EVERY = 10_000


def flush_changelog_buffers(app: Any) -> int:
    """Apply the changelog records Faust's recovery holds in its buffers; returns how many.

    Faust buffers the changelog records of standby copies and applies them
    by the thousand (``standby_buffer_size``): on a quiet table a standby
    copy would stay up to 999 records behind its active copy for good, and
    never be at its offset for ``projector verify``. The worker calls this
    about once a second, so a standby copy is at most about a second behind.
    """
    recovery = app.tables.recovery
    held = sum(len(buffer) for buffer in recovery.buffers.values())
    if held:
        recovery.flush_buffers()
    return held


def held_partitions(app: Any, events_topic: str, changelog_topic: str) -> dict[int, str]:
    """The partitions of a table this worker holds, by partition: ``"active"`` or ``"standby"``."""
    out: dict[int, str] = {}
    try:
        standbys = app.assignor.assigned_standbys()
    except Exception as exc:  # no assignment yet
        log.debug("no standby assignment yet: %r", exc)
        standbys = set()
    for tp in standbys:
        if tp.topic == changelog_topic:
            out[tp.partition] = "standby"
    try:
        actives = active_partitions(app)
    except Exception as exc:  # no assignment yet
        log.debug("no assignment yet: %r", exc)
        actives = set()
    for tp in actives:
        if tp.topic in (events_topic, changelog_topic):
            out[tp.partition] = "active"
    return out


async def copy_digest(store: Any, partition: int) -> dict[str, Any]:
    """``{"offset", "rows", "digest"}`` of one partition database of a Faust RocksDB ``store`` (``table.data``).

    ``offset``: the next changelog offset the copy will apply (the stored
    last applied offset + 1; 0 when it has applied none).
    """
    db = partition_db(store, partition)
    digest = Digest()
    applied: Optional[bytes] = None
    add = digest.add
    for n, (key, value) in enumerate(db.items(), 1):
        if key == OFFSET_KEY:
            applied = value
        else:
            add(key, value)
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return {"offset": int(applied) + 1 if applied is not None else 0, "rows": digest.rows, "digest": digest.hex}


async def table_digests(app: Any, events_topic: str, table: Any) -> list[dict[str, Any]]:
    """One entry per partition copy of the Faust ``table`` this worker holds, in partition order."""
    store = table.data
    changelog = table.changelog_topic.get_topic_name()
    out = []
    for partition, role in sorted(held_partitions(app, events_topic, changelog).items()):
        entry = await copy_digest(store, partition)
        out.append({"partition": partition, **entry, "role": role})
    return out

