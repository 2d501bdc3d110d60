"""Upcasters: bring old event payloads to the current shape before any fold sees them.

A module in ``tables/`` may declare, next to (or instead of) a read model:

- ``SCHEMA_VERSIONS = {"MoneyDeposited": 2}``: the current ``schema_version``
  of an event type (types not listed are at 1);
- ``UPCASTERS = {("MoneyDeposited", 1): fn}``: ``fn(data) -> data`` turns a
  version-1 payload into a version-2 one.

At startup every chain is checked: each type at version N > 1 needs upcasters
from 1 to N-1, and no upcaster may name a version at or above the current one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from projector.core.envelope import INVALID_ENVELOPE, Event
from projector.core.errors import InvalidRecord, SchemaError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Schemas:
    def __init__(self, current: Mapping[str, int] | None = None, upcasters: Mapping[tuple[str, int], Upcaster] | None = None) -> None:
        self.current = dict(current or {})
        self.upcasters = dict(upcasters or {})
        self._check()

    @classmethod
    def from_modules(cls, modules: Iterable[Any]) -> "Schemas":
        current: dict[str, int] = {}
        upcasters: dict[tuple[str, int], Upcaster] = {}
        for module in modules:
            where = getattr(module, "__file__", None) or getattr(module, "__name__", "?")
            for etype, version in (getattr(module, "SCHEMA_VERSIONS", None) or {}).items():
                if etype in current and current[etype] != version:
                    raise SchemaError(f"{where}: {etype} is declared at schema version {version} and {current[etype]}")
                current[etype] = version
            for key, fn in (getattr(module, "UPCASTERS", None) or {}).items():
                if key in upcasters and upcasters[key] is not fn:
                    raise SchemaError(f"{where}: a second upcaster for {key}")
                upcasters[key] = fn
        return cls(current, upcasters)

    def _check(self) -> None:
        for etype, version in self.current.items():
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise SchemaError(f"SCHEMA_VERSIONS[{etype!r}] must be an integer >= 1, got {version!r}")
            missing = [v for v in range(1, version) if (etype, v) not in self.upcasters]
            if missing:
                raise SchemaError(
                    f"{etype} is at schema version {version} but has no upcaster from version(s) {missing}: "
                    f"events of those versions could never reach the current shape"
                )
        for key, fn in self.upcasters.items():
            if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)
                    and isinstance(key[1], int) and not isinstance(key[1], bool) and key[1] >= 1):
                raise SchemaError(f"UPCASTERS keys must be (event type, schema version >= 1), got {key!r}")
            etype, version = key
            if not callable(fn):
                raise SchemaError(f"UPCASTERS[{(etype, version)!r}] is not a function")
            current = self.current.get(etype, 1)
            if version >= current:
                raise SchemaError(
                    f"upcaster for {etype} v{version} leads past the current schema version {current}; "
                    f"declare SCHEMA_VERSIONS[{etype!r}] = {version + 1}"
                )

    def upcast_all(self, events: list[Event]) -> list[Event]:
        """:meth:`upcast` of each event (the same list when nothing needs upcasting)."""
        if not self.current:
            for event in events:
                if event.schema_version != 1:
                    break
            else:
                return events
        return [self.upcast(e) for e in events]

    def upcast(self, event: Event) -> Event:
        """The event with its data at the current schema version of its type."""
        current = self.current.get(event.type, 1)
        version = event.schema_version
        if version == current:
            return event
        if version > current:
            raise InvalidRecord(
                INVALID_ENVELOPE,
                f"{event.type} v{event.version} has schema_version {version}, newer than the current {current}",
            )
        data = event.data
        while version < current:
            try:
                data = self.upcasters[(event.type, version)](data)
            except Exception as exc:
                raise InvalidRecord(
                    INVALID_ENVELOPE,
                    f"upcasting {event.type} from schema version {version} failed: {type(exc).__name__}: {exc}",
                ) from exc
            if not isinstance(data, dict):
                raise InvalidRecord(INVALID_ENVELOPE, f"upcaster for {event.type} v{version} did not return an object")
            version += 1
        return replace(event, data=data, schema_version=current)
