"""Cooperative time slices: long batch work gives the event loop back every couple of milliseconds.

A worker folds, sends and writes on the same event loop that answers HTTP
requests. A fetch of tens of thousands of records takes long to process; done
in one go, it holds every request up for all of it. Work that runs in steps
(a generator that yields every few dozen records) is driven through
:meth:`TimeSlice.run`, and loops call :meth:`TimeSlice.check`: both give the
loop back once the slice is used up, and cost one clock read otherwise.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any, Generator

#: How long batch work may hold the event loop before it lets requests in.
SLICE_SECONDS = 0.002


class TimeSlice:
    def __init__(self, seconds: float = SLICE_SECONDS) -> None:
        self.seconds = seconds
        #: Time spent away (other tasks ran), so phase timings can leave it out.
        self.paused = 0.0
        self.deadline = perf_counter() + seconds

    async def check(self) -> None:
        """Give the event loop back if this slice is used up."""
        now = perf_counter()
        if now >= self.deadline:
            await asyncio.sleep(0)
            after = perf_counter()
            self.paused += after - now
            self.deadline = after + self.seconds

    async def run(self, steps: Generator[None, None, Any]) -> Any:
        """Run a generator of steps to its end, checking the slice between steps; returns its value."""
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            await self.check()
