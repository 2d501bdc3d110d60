"""Every error the runtime raises, in one place: each message says what went wrong and what to change."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting in the environment has a value projector cannot use."""


class BrokerError(RuntimeError):
    """Kafka cannot be used with these settings; the message says why and what to change.

    ``kind`` is ``unreachable`` (worth retrying), ``authentication``, ``tls``,
    ``authorization`` or ``protocol``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class TopicError(RuntimeError):
    """A topic could not be created or has an unusable shape."""


class InstanceFenced(RuntimeError):
    """Another worker joined the consumer group with this worker's PROJECTOR_INSTANCE_ID: Kafka fenced this one."""
