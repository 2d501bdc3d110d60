"""Re-keyed read models: pure logic on both sides of the repartition topic.

Source side: when an aggregate's source row changes within a batch, the
group it belongs to and its contribution are compared with what they were at
the start of the batch, and :func:`change_messages` says what to send:
a retraction to the old group when the row changed hands, and an upsert of the
new contribution to its (new) group.

Group side: every group keeps each member's last contribution and the
aggregate version it came from (``group\\0aggregate`` in a members table).
:func:`apply_change` takes the member's old contribution out of the group's
state and puts the new one in, so the group is corrected exactly on every
change, and a message at or below the member's version (a replay) is skipped.
A group whose last member left keeps its row with value ``None`` (served as
404), so its version never goes backwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from projector.core.catalog import DerivedModel

SEP = b"\x00"

Contribution = Optional[tuple[str, dict]]  # (group, contribution) or None: in no group


def member_key(group: bytes, aggregate_id: bytes) -> bytes:
    return group + SEP + aggregate_id


def contribution_of(model: DerivedModel, value: Any) -> Contribution:
    """The (group, contribution) of a source row value; user code, so it may raise."""
    if value is None:
        return None
    group = model.group_key(value)
    if group is None:
        return None
    if not isinstance(group, str) or group == "":
        raise ValueError(f"{model.name}: key(row) must return a non-empty string or None, got {group!r}")
    contribution = model.contribution(value)
    if not isinstance(contribution, dict):
        raise ValueError(f"{model.name}: contribution(row) must return a dict, got {type(contribution).__name__}")
    return group, contribution


def change_messages(old: Contribution, new: Contribution, aggregate_id: str, version: int) -> list[tuple[str, dict]]:
    """The repartition messages ``(group, message)`` for a source row that went from ``old`` to ``new``."""
    out = []
    if old is not None and (new is None or old[0] != new[0]):
        out.append((old[0], {"aggregate_id": aggregate_id, "version": version, "contribution": None}))
    if new is not None and new != old:
        out.append((new[0], {"aggregate_id": aggregate_id, "version": version, "contribution": new[1]}))
    return out


@dataclass
class GroupChange:
    row: Optional[dict[str, Any]]
    member: dict[str, Any]
    applied: bool


def apply_change(
    model: DerivedModel, row: Optional[dict[str, Any]], member: Optional[dict[str, Any]], message: dict[str, Any]
) -> GroupChange:
    """Apply one repartition message to a group's row, given the member's last entry."""
    version = message["version"]
    if member is not None and member["version"] >= version:
        return GroupChange(row=row, member=member, applied=False)
    state = row["value"] if row and row["value"] is not None else model.initial_state()
    members = row["members"] if row else 0
    old = member["contribution"] if member else None
    new = message["contribution"]
    if old is not None:
        state = model.subtract(state, old)
        members -= 1
    if new is not None:
        state = model.add(state, new)
        members += 1
    # The row version is the sum of its members' versions (those that left
    # included): it only grows, and does not depend on how events were batched.
    row_version = (row["version"] if row else 0) + version - (member["version"] if member else 0)
    return GroupChange(
        row={"version": row_version, "value": state if members > 0 else None, "members": members},
        member={"version": version, "contribution": new},
        applied=True,
    )
