"""What a decider may raise, and how a catalog module declares one.

An aggregate declares, next to its state fold (a read model keyed by
aggregate id), a pure ``decide(state, command, settings)``:

- ``state``: the aggregate's current state (its read-model row's value, or
  ``None`` before its first event);
- ``command``: ``{"type": str, "data": dict}``;
- ``settings``: a read-only view of the control table (CONTRACT §3), with the
  built-in keys at the values this worker applies;

and returns the new events as ``[{"type": str, "data": dict}, ...]`` (several
events are appended all together or not at all), or raises
:class:`Rejected` (the command is valid but the aggregate refuses it: 422) or
:class:`InvalidCommand` (the command itself is malformed: 400). It must be
deterministic: projector derives event ids and versions from the command
id and the aggregate's version, so the same state and command always give the
same events.
"""

from __future__ import annotations


class Rejected(Exception):
    """The aggregate refuses the command; ``reason`` is a short code such as ``insufficient_funds``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


class InvalidCommand(ValueError):
    """The command is malformed (unknown type, missing or ill-typed data)."""
