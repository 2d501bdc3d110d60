"""A table partition's digest: one number over its rows, whatever their order.

``GET /tables/{table}/digest`` (each copy a worker holds, active or standby)
and ``projector verify`` (which compares those copies, and with ``--rebuild``
a scratch copy built from the events topic) compute it here, the one place,
so that equal rows always give equal digests.

Each row ``(key, value)`` (the stored bytes) counts as the first 8 bytes of
``blake2b(key + b"\\0" + value)``, read as a big-endian integer; the digest is
their sum modulo 2**64, written as 16 hex digits. A sum does not depend on
the order the rows are read in, and changing, adding or dropping one row
changes it (barring a 2**-64 accident).
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Iterable

MASK = (1 << 64) - 1


def row_digest(key: bytes, value: bytes) -> int:
    """One row's share of the digest."""
    return int.from_bytes(blake2b(key + b"\0" + value, digest_size=8).digest(), "big")


class Digest:
    """A running digest: :meth:`add` each row, then read :attr:`hex` and :attr:`rows`."""

    __slots__ = ("total", "rows")

    def __init__(self) -> None:
        self.total = 0
        self.rows = 0

    def add(self, key: bytes, value: bytes) -> None:
        self.total = (self.total + row_digest(key, value)) & MASK
        self.rows += 1

    @property
    def hex(self) -> str:
        return format(self.total, "016x")


def digest_rows(rows: Iterable[tuple[bytes, bytes]]) -> tuple[int, str]:
    """``(row count, digest)`` of ``rows``, in any order."""
    d = Digest()
    for key, value in rows:
        d.add(key, value)
    return d.rows, d.hex
