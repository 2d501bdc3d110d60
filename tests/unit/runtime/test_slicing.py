"""Time slices: batch work in steps gives the event loop back, and gets the same result."""

import asyncio

from projector.runtime.slicing import TimeSlice


def _steps(n: int, log: list):
    for i in range(n):
        log.append(i)
        yield
    return sum(log)


def test_run_returns_the_generators_value_and_lets_other_tasks_in():
    async def main():
        log: list[int] = []
        others: list[int] = []

        async def other():
            while len(log) < 50:
                others.append(len(log))
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other())
        await asyncio.sleep(0)
        # A slice of 0 s is always used up: the loop is given back after every step.
        result = await TimeSlice(0.0).run(_steps(50, log))
        await task
        return result, others

    result, others = asyncio.run(main())
    assert result == sum(range(50))
    # The other task ran between the steps, not only before or after all of them.
    assert any(0 < seen < 50 for seen in others)


def test_a_long_slice_never_gives_the_loop_back():
    async def main():
        log: list[int] = []
        others: list[int] = []

        async def other():
            others.append(len(log))

        task = asyncio.ensure_future(other())
        slice_ = TimeSlice(60.0)
        result = await slice_.run(_steps(50, log))
        await task
        return result, others, slice_.paused

    result, others, paused = asyncio.run(main())
    assert result == sum(range(50))
    assert others == [50]
    assert paused == 0.0
