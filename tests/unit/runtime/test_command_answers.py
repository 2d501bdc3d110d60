"""Where the writer sends a command's answer: only to a worker of its group, never to any ``reply_to``."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from projector.core.commands import Answer
from projector.runtime.app import Projector
from projector.runtime.command_side import CommandRoundTrip
from projector.runtime.config import Settings

ME, PEER, STRANGER = "http://127.0.0.1:6066", "http://127.0.0.1:6067", "http://evil.example:80"


def round_trip(is_peer: Any) -> tuple[CommandRoundTrip, list[tuple[str, list]]]:
    sent: list[tuple[str, list]] = []
    spawned: list[Any] = []

    async def send_answers(url: str, items: list) -> None:
        sent.append((url, items))

    trip = CommandRoundTrip(url=ME, command_topic="cmd", partitions=1, produce=None, send_answers=send_answers,
                            spawn=spawned.append, is_peer=is_peer)
    trip._spawned = spawned  # type: ignore[attr-defined]
    return trip, sent


def answer(command_id: str, reply_to: str | None) -> Answer:
    return Answer(command_id=command_id, status=200, body={"version": 1}, reply_to=reply_to)


def test_answers_go_only_to_workers_of_the_group(caplog: pytest.LogCaptureFixture) -> None:
    """Fails on the old code: any reply_to in a command record got the answer (and, then, the API token)."""
    trip, _ = round_trip(lambda url: url.rstrip("/") in {ME, PEER})
    with caplog.at_level(logging.WARNING):
        trip.deliver([answer("c-1", PEER), answer("c-2", STRANGER), answer("c-3", STRANGER + "/x")])
    spawned = trip._spawned  # type: ignore[attr-defined]
    assert len(spawned) == 1, "one send, to the group member"
    assert spawned[0].cr_frame.f_locals["url"] == PEER
    spawned[0].close()
    assert trip.dropped_answers == 2
    assert any("not a worker of this group" in r.getMessage() for r in caplog.records)


def test_without_a_group_check_no_answer_leaves_the_worker() -> None:
    trip, _ = round_trip(None)
    trip.deliver([answer("c-1", PEER)])
    assert trip._spawned == [] and trip.dropped_answers == 1  # type: ignore[attr-defined]


def test_local_answers_are_resolved_here() -> None:
    trip, _ = round_trip(lambda url: False)
    trip.deliver([answer("c-1", ME), answer("c-2", None)])
    assert trip._spawned == [] and trip.dropped_answers == 0  # type: ignore[attr-defined]


def test_the_group_is_what_the_assignor_knows() -> None:
    """A worker's group: its own URL and the URLs in Faust's table metadata, compared without a trailing slash."""
    metadata = {PEER + "/": {"t": [0]}}
    fake = SimpleNamespace(settings=Settings(web_port=6066),
                           app=SimpleNamespace(router=SimpleNamespace(tables_metadata=lambda: metadata)))
    fake.group_urls = lambda: Projector.group_urls(fake)
    assert Projector.group_urls(fake) == {ME, PEER}
    assert Projector.is_group_member(fake, PEER) and Projector.is_group_member(fake, ME + "/")
    assert not Projector.is_group_member(fake, STRANGER)
