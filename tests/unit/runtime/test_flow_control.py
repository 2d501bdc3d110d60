"""Faust's flow control: the end of a rebalance no longer drops the changelog records queued at that moment.

Faust's recovery resumes the standby partitions, and then, at its very end,
resumes flow control again, which emptied every managed queue. A standby
record delivered to the changelog queue and not yet applied was dropped
there while the consumer had moved past it. Found in the fault test: a
standby copy of a members table lacked one record, and once promoted its
group row kept a wrong sum.
"""

import asyncio

import faust

from projector.runtime.faust_patches import keep_changelog_records_on_resume


def _app() -> faust.App:
    return faust.App("flow-control-test", broker="kafka://127.0.0.1:1", store="memory://")


def _queued(queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_faust_alone_drops_a_queued_changelog_record_when_the_flow_resumes():
    """The trap itself, kept as a test: if Faust changes here, the patch can go."""

    async def scenario():
        app = _app()
        queue = app.tables.changelog_queue
        app.flow_control.resume()
        await queue.put("standby record 4223")
        app.flow_control.resume()  # Recovery._resume_streams, at the end of the rebalance
        return _queued(queue)

    assert asyncio.run(scenario()) == []


def test_resuming_keeps_queued_changelog_records_and_still_empties_other_queues():
    async def scenario():
        app = _app()
        keep_changelog_records_on_resume(app)
        queue = app.tables.changelog_queue
        stream_queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
        app.flow_control.resume()
        await queue.put("standby record 4223")
        await queue.put("standby record 4224")
        await stream_queue.put("stream event")
        app.flow_control.resume()
        assert app.flow_control.is_active()
        return _queued(queue), _queued(stream_queue)

    changelog, stream = asyncio.run(scenario())
    assert changelog == ["standby record 4223", "standby record 4224"]
    assert stream == []


def test_a_revoke_still_empties_the_changelog_queue_and_suspends_puts():
    async def scenario():
        app = _app()
        keep_changelog_records_on_resume(app)
        queue = app.tables.changelog_queue
        app.flow_control.resume()
        await queue.put("record of a partition being revoked")
        app.flow_control.suspend()  # App._on_partitions_revoked
        app.flow_control.clear()
        blocked = asyncio.ensure_future(queue.put("delivered during the revoke"))
        for _ in range(10):  # let the loop run the put as far as it can go
            await asyncio.sleep(0)
        assert not blocked.done()  # a put waits for the flow to resume
        emptied = _queued(queue)
        app.flow_control.resume()
        await asyncio.wait_for(blocked, 5)
        return emptied, _queued(queue)

    emptied, after = asyncio.run(scenario())
    assert emptied == []
    assert after == ["delivered during the revoke"]
