"""Every error the core raises, in one place.

What a read model's fold or a decider may raise is at the end: a
``decide(state, command, settings)`` (declared next to an aggregate's state
fold, a read model keyed by aggregate id) gets

- ``state``: the aggregate's current state (its read-model row's value, or
  ``None`` before its first event);
- ``command``: ``{"type": str, "data": dict}``;
- ``settings``: a read-only view of the control table (CONTRACT §3), with
  every declared setting at the value this worker applies;

and returns the new events as ``[{"type": str, "data": dict}, ...]`` (several
events are appended all together or not at all), or raises
:class:`Rejected` (the command is valid but the aggregate refuses it: 422) or
:class:`InvalidCommand` (the command itself is malformed: 400). It must be
deterministic: projector derives event ids and versions from the command
id and the aggregate's version, so the same state and command always give the
same events. Read-model modules import both from ``projector``.
"""

from __future__ import annotations


class InvalidRecord(Exception):
    """A record that cannot be applied; ``reason`` is a CONTRACT §2 dead-letter reason.

    Raised when a record cannot be decoded (``invalid_json``,
    ``invalid_envelope``, ``key_mismatch``, ``unknown_schema_version``...) and
    when a fold refuses its events (``fold_error``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ReadModelError(Exception):
    """A module in tables/ does not declare a usable read model."""


class SchemaError(Exception):
    """Upcaster declarations that do not form complete chains."""


class ControlError(ValueError):
    """A control key or value that projector refuses to write."""


class Rejected(Exception):
    """The aggregate refuses the command; ``reason`` is a short code such as ``insufficient_funds``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


class InvalidCommand(ValueError):
    """The command is malformed (unknown type, missing or ill-typed data)."""
