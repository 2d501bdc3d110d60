"""StaticMember: aiokafka's group coordinator as a static member that leaves on a clean stop.

The wire format of the two requests aiokafka lacks (Heartbeat v3, LeaveGroup
v3) and what the coordinator sends, with a stand-in for aiokafka's coordinator
(tests/integration/test_static_membership.py and test_faults.py run it
against Kafka).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import HeartbeatRequest, JoinGroupRequest

from projector.runtime.errors import InstanceFenced
from projector.runtime.faust_patches import (
    FENCED_INSTANCE_ID,
    StaticHeartbeatRequest,
    StaticLeaveGroupRequest,
    StaticMember,
)

#: API versions a Kafka 4 broker offers: Heartbeat 0-4, LeaveGroup 0-5.
KAFKA_4 = {12: (0, 4), 13: (0, 5)}


class Coordinator:
    """What StaticMember uses of aiokafka's GroupCoordinator."""

    def __init__(self, answers: list[Any]) -> None:
        self.group_id, self.generation, self.member_id = "g", 7, "m-1"
        self.answers = answers
        self.sent: list[Any] = []
        self.rejoins = 0
        self.closed = False

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request)
        return self.answers.pop(0)

    async def _maybe_leave_group(self) -> None:
        raise AssertionError("aiokafka's own leave is replaced")

    async def close(self) -> None:
        self.closed = True
        await self._maybe_leave_group()

    def reset_generation(self) -> None:
        self.generation, self.member_id = -1, ""
        self.request_rejoin()

    def request_rejoin(self) -> None:
        self.rejoins += 1


def member(answers: list[Any]) -> tuple[StaticMember, Coordinator, list[Exception]]:
    coordinator = Coordinator(answers)
    fenced: list[Exception] = []
    m = StaticMember(coordinator, "worker-0-6066", fenced.append)
    m.install()
    return m, coordinator, fenced


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_heartbeat_v3_and_leave_group_v3_encode_the_instance_id():
    hb = StaticHeartbeatRequest("g", 7, "m-1", "worker-0-6066").prepare(KAFKA_4)
    assert hb.API_VERSION == 3 and not hb.FLEXIBLE_VERSION
    assert hb.encode() == b"".join([b"\x00\x01g", b"\x00\x00\x00\x07", b"\x00\x03m-1", b"\x00\x0dworker-0-6066"])
    # A broker without v3 gets v1, without the instance id.
    assert StaticHeartbeatRequest("g", 7, "m-1", "w").prepare({12: (0, 2)}).API_VERSION == 1
    leave = StaticLeaveGroupRequest("g", "m-1", "worker-0-6066").prepare(KAFKA_4)
    assert leave.API_VERSION == 3 and not leave.FLEXIBLE_VERSION
    assert leave.encode() == b"".join([b"\x00\x01g", b"\x00\x00\x00\x01", b"\x00\x03m-1", b"\x00\x0dworker-0-6066"])


def test_heartbeats_name_the_instance_id():
    _, coordinator, fenced = member([SimpleNamespace(error_code=0)])
    run(coordinator._send_req(HeartbeatRequest("g", 7, "m-1")))
    sent = coordinator.sent[0]
    assert isinstance(sent, StaticHeartbeatRequest)
    assert sent.prepare(KAFKA_4).group_instance_id == "worker-0-6066"
    assert fenced == []


def test_fenced_instance_id_stops_the_worker_once_and_it_does_not_join_again():
    _, coordinator, fenced = member([SimpleNamespace(error_code=FENCED_INSTANCE_ID)] * 2)
    run(coordinator._send_req(HeartbeatRequest("g", 7, "m-1")))
    run(coordinator._send_req(HeartbeatRequest("g", 7, "m-1")))
    assert len(fenced) == 1 and isinstance(fenced[0], InstanceFenced)
    assert "PROJECTOR_INSTANCE_ID='worker-0-6066'" in str(fenced[0])
    join = JoinGroupRequest("g", 20000, 60000, "", "worker-0-6066", "consumer", [])
    with pytest.raises(KafkaError, match="fenced"):
        run(coordinator._send_req(join))
    assert len(coordinator.sent) == 2
    # Nor does it leave: the instance id is the other worker's now.
    run(coordinator.close())
    assert len(coordinator.sent) == 2


def test_a_clean_stop_leaves_the_group_with_the_instance_id():
    leave_ok = SimpleNamespace(error_code=0, members=[("m-1", "worker-0-6066", 0)])
    _, coordinator, _ = member([leave_ok])
    run(coordinator.close())
    assert coordinator.closed
    (sent,) = coordinator.sent
    assert isinstance(sent, StaticLeaveGroupRequest)
    assert sent.prepare(KAFKA_4).members == [("m-1", "worker-0-6066")]
    assert coordinator.generation == -1 and coordinator.member_id == ""


def test_a_clean_stop_told_to_stay_keeps_the_place_in_the_group():
    coordinator = Coordinator([])
    StaticMember(coordinator, "worker-0-6066", [].append, leave_on_stop=False).install()
    run(coordinator.close())
    assert coordinator.closed and coordinator.sent == []
    assert coordinator.generation == -1


def test_leaving_anywhere_else_keeps_the_place_in_the_group():
    """aiokafka leaves when the poll interval runs out; a static member keeps its place there, as Kafka's clients do."""
    _, coordinator, _ = member([])
    run(coordinator._maybe_leave_group())
    assert coordinator.sent == [] and coordinator.rejoins == 1


def test_a_refused_leave_is_logged_not_raised(caplog):
    refused = SimpleNamespace(error_code=0, members=[("m-1", "worker-0-6066", 25)])  # UNKNOWN_MEMBER_ID
    _, coordinator, _ = member([refused])
    run(coordinator.close())
    assert "LeaveGroup request failed: UnknownMemberIdError" in caplog.text


class Assignor:
    def __init__(self, url: str) -> None:
        self.url = url
        self.assigned = 0

    @staticmethod
    def _decompress(data: bytes) -> bytes:
        return data

    def on_assignment(self, assignment: Any) -> None:
        self.assigned += 1
        assert self.url == assignment.made_for  # Faust's own check


def test_an_assignment_made_for_another_url_makes_the_group_rebalance(monkeypatch):
    from projector.runtime import faust_patches

    monkeypatch.setattr(faust_patches.ClientMetadata, "loads",
                        classmethod(lambda cls, data: SimpleNamespace(url=data.decode())))
    m, coordinator, _ = member([])
    assignor = Assignor("http://w2:6066")
    m.watch_assignments(assignor, "http://w2:6066")
    assignor.on_assignment(SimpleNamespace(user_data=b"http://w2:6066", made_for="http://w2:6066"))
    assert coordinator.rejoins == 0
    assignor.on_assignment(SimpleNamespace(user_data=b"http://w1:6066", made_for="http://w1:6066"))
    assert assignor.assigned == 2 and coordinator.rejoins == 1
