"""Read-your-writes: requests parked until this worker writes a row."""

from __future__ import annotations

import asyncio
from typing import Mapping, Optional

#: (table, partition, key)
Slot = tuple[str, int, bytes]


class RowWaiters:
    """Futures waiting for the next write of a row, by table, partition and key.

    The changelog sink wakes the rows a batch wrote; a revoke wakes every
    waiter (the row may now be written by another worker, and the request
    asks again).
    """

    def __init__(self) -> None:
        self._slots: dict[Slot, set[asyncio.Future]] = {}

    def park(self, table: str, partition: int, key: bytes) -> asyncio.Future:
        """A future that completes the next time this worker writes ``key`` (or loses partitions)."""
        waiter = asyncio.get_running_loop().create_future()
        self._slots.setdefault((table, partition, key), set()).add(waiter)
        return waiter

    def unpark(self, table: str, partition: int, key: bytes, waiter: asyncio.Future) -> None:
        slot = (table, partition, key)
        waiters = self._slots.get(slot)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._slots[slot]

    @property
    def parked(self) -> int:
        """How many requests are parked."""
        return sum(len(w) for w in self._slots.values())

    def __bool__(self) -> bool:
        return bool(self._slots)

    def wake(self, writes: Mapping[tuple[str, int], Mapping[bytes, Optional[bytes]]]) -> None:
        """Wake the requests parked on a row of ``writes`` (a plan's writes, by table and partition)."""
        for slot in [s for s in self._slots if s[2] in writes.get((s[0], s[1]), ())]:
            _wake(self._slots.pop(slot))

    def wake_all(self) -> None:
        slots, self._slots = self._slots, {}
        for waiters in slots.values():
            _wake(waiters)


def _wake(waiters: set[asyncio.Future]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class ParkingLimit:
    """How many requests one worker keeps parked at once (read-your-writes and ``/control`` waits).

    :meth:`enter` takes a place, or answers False when all ``cap`` are taken
    (the request answers 503 ``overloaded``); :meth:`leave` gives it back.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parked = 0

    def enter(self) -> bool:
        if self.parked >= self.cap:
            return False
        self.parked += 1
        return True

    def leave(self) -> None:
        self.parked = max(0, self.parked - 1)
