"""The control table (CONTRACT §3): settings and switches every worker holds in full.

The control topic has one partition and is compacted. A record's key is a
control key (UTF-8) and its value any JSON value; a tombstone or a JSON
``null`` deletes the key. Anyone may write it: ``PUT /control/{key}``, the
``projector control`` command, or a plain Kafka producer.

:class:`ControlState` is the table itself, free of Faust and Kafka: it applies
records in offset order, one at a time, and is what every worker reads.
:mod:`projector.runtime.control_table` feeds it from a Faust ``GlobalTable`` whose changelog *is*
the control topic (the way Kafka Streams' ``addGlobalStore`` works), so
recovery at startup and live updates go through the same :meth:`ControlState.apply`.

Application code gets a read-only view (:attr:`ControlState.entries`) and
can be told of every change (:meth:`ControlState.subscribe`).
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections import Counter
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import orjson

from projector.core.catalog import BUILTIN, COMMANDS_ENABLED, ControlSetting, settings_with_builtin
from projector.core.errors import ControlError

log = logging.getLogger(__name__)

#: Longest control key accepted, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

#: Listener: (key, old value or None, new value or None).
Listener = Callable[[str, Any, Any], None]

def check_key(key: str) -> str:
    """``key`` if it is a usable control key, else :class:`ControlError`."""
    if not isinstance(key, str) or not key:
        raise ControlError(f"a control key must be a non-empty string, got {key!r}")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ControlError(f"control key {key[:40]!r}... is longer than {MAX_KEY_BYTES} bytes of UTF-8")
    # Control characters, and line or paragraph separators: they would garble logs and listings.
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in key):
        raise ControlError(f"control key {key!r} contains a control character or line separator")
    return key


def check_entry(key: str, value: Any, settings: Mapping[str, ControlSetting] = BUILTIN) -> None:
    """Refuse, with :class:`ControlError`, what projector's own writers must not write.

    ``value`` ``None`` is a delete and always allowed. Values of declared
    ``settings`` must have their declared type; other keys take any JSON value.
    """
    check_key(key)
    setting = settings.get(key)
    if value is None or setting is None:
        return
    problem = setting.problem(value)
    if problem:
        raise ControlError(f"{key} {problem}, got {orjson.dumps(value).decode()}")


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: Python's ``1 == 1.0 == True`` does not hold there, at any depth."""
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


def encode_value(value: Any) -> Optional[bytes]:
    """The record value for ``value``: a tombstone for ``None``, else its JSON."""
    return None if value is None else orjson.dumps(value)


class ControlState:
    """The whole control table, built from the control topic's records.

    Records are applied in whatever order they arrive, and each at most once:
    every key keeps the offset of the record that set it, so an older record
    never overwrites a newer one (last writer wins by offset, as compaction
    decides). Offsets skipped between two records (compaction, transaction
    markers, or a record the consumer never delivered) are kept as *missing*
    until they are read again or known not to hold records
    (:meth:`resolve`); :attr:`offset` is the offset up to which nothing is
    missing.
    """

    def __init__(self, settings: Mapping[str, ControlSetting] = MappingProxyType({})) -> None:
        #: Keys with a meaning (projector's and the read models'), whose values are checked.
        self.settings: dict[str, ControlSetting] = settings_with_builtin(settings)
        self._entries: dict[str, Any] = {}
        #: Read-only view of the entries, for application code and folds.
        self.entries: Mapping[str, Any] = MappingProxyType(self._entries)
        #: Highest offset seen (-1: none yet).
        self.seen = -1
        #: The control topic's end offset captured at startup (None: not yet known).
        self.target: Optional[int] = None
        self.records = 0  # records applied or skipped as invalid, each offset once
        self.gaps = 0  # offset ranges skipped between two records
        self.filled = 0  # records applied from a missing range (arrived late or re-read)
        self.invalid: Counter = Counter()  # by reason
        self.listener_errors = 0
        self._missing: list[list[int]] = []  # sorted, disjoint [start, end) ranges below seen
        self._key_offsets: dict[str, int] = {}  # offset of the record that last set (or deleted) each key
        self._listeners: list[Listener] = []
        self._waiters: set[asyncio.Future] = set()

    @property
    def offset(self) -> int:
        """The offset through which every record is applied (-1: none yet)."""
        return self._missing[0][0] - 1 if self._missing else self.seen

    @property
    def missing(self) -> list[tuple[int, int]]:
        """The ``[start, end)`` offset ranges not yet applied nor resolved."""
        return [(a, b) for a, b in self._missing]

    # --- applying records ----------------------------------------------------------

    def apply(self, key: Optional[bytes], value: Optional[bytes], offset: int) -> bool:
        """Apply one record of the control topic; True when the table changed.

        Never raises: a record that cannot be applied is logged, counted in
        :attr:`invalid` and skipped (the key keeps its previous value). A
        record whose offset was applied already is skipped.
        """
        if offset > self.seen:
            if offset > self.seen + 1:
                self._missing.append([self.seen + 1, offset])
                self.gaps += 1
            self.seen = offset
        elif self._take_missing(offset):
            self.filled += 1
        else:
            return False
        self.records += 1
        try:
            return self._apply(key, value, offset)
        finally:
            self._wake()

    def note_end(self, end: int) -> None:
        """The topic holds offsets up to ``end`` (exclusive): any not seen yet are missing."""
        if end - 1 > self.seen:
            self._missing.append([self.seen + 1, end])
            self.gaps += 1
            self.seen = end - 1

    def resolve(self, start: int, end: int) -> None:
        """Offsets in ``[start, end)`` that are still missing hold no record (they were read and not found)."""
        kept = []
        for a, b in self._missing:
            if a < start:
                kept.append([a, min(b, start)])
            if b > end:
                kept.append([max(a, end), b])
        self._missing = kept
        self._wake()

    def _take_missing(self, offset: int) -> bool:
        for i, (a, b) in enumerate(self._missing):
            if a <= offset < b:
                parts = [r for r in ([a, offset], [offset + 1, b]) if r[0] < r[1]]
                self._missing[i:i + 1] = parts
                return True
            if a > offset:
                break
        return False

    def _apply(self, key: Optional[bytes], value: Optional[bytes], offset: int) -> bool:
        if key is None:
            return self._skip("no_key", offset, None, "a control record needs a key")
        try:
            name = check_key(bytes(key).decode("utf-8"))
        except (UnicodeDecodeError, ControlError) as exc:
            return self._skip("invalid_key", offset, key, str(exc))
        if value is None:
            new = None
        else:
            try:
                new = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                return self._skip("invalid_json", offset, name, f"value is not JSON: {exc}")
        if self._key_offsets.get(name, -1) > offset:
            return False  # a later record of this key is applied already
        self._key_offsets[name] = offset
        setting = self.settings.get(name)
        if setting is not None and new is not None:
            problem = setting.problem(new)
            if problem:
                # Kept as written (GET /control shows it), but the setting falls back to its default.
                self.invalid["invalid_setting"] += 1
                log.warning("control %s at offset %d %s; using the default until it is fixed", name, offset, problem)
        old = self._entries.get(name)
        if new is None:
            if name not in self._entries:
                return False
            del self._entries[name]
        else:
            if name in self._entries and _same_json(old, new):
                return False
            self._entries[name] = new
        self._notify(name, old, new)
        return True

    def _skip(self, reason: str, offset: int, key: Any, detail: str) -> bool:
        self.invalid[reason] += 1
        log.warning("control record at offset %d (key %r) skipped: %s", offset, key, detail)
        return False

    # --- listeners and waiters -------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(key, old, new)`` after every change; returns an unsubscribe function.

        ``new`` is None for a delete, ``old`` None for a new key. Listeners run
        in the worker's event loop and must not block; one that raises is
        logged and counted, and the others still run.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, key: str, old: Any, new: Any) -> None:
        for listener in list(self._listeners):
            try:
                listener(key, old, new)
            except Exception:
                self.listener_errors += 1
                log.exception("control listener %r failed on %s", listener, key)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_offset(self, offset: int, timeout: float) -> bool:
        """Wait until the record at ``offset`` is applied, at most ``timeout`` s; True if it is.

        Woken by :meth:`apply`, not by polling; a waiter that times out or is
        cancelled leaves nothing behind.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.offset < offset:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                return self.offset >= offset
            finally:
                self._waiters.discard(waiter)
        return True

    # --- readiness and the declared settings -------------------------------------------

    @property
    def caught_up(self) -> bool:
        """True once every record up to the end offset captured at startup is applied."""
        return self.target is not None and self.offset + 1 >= self.target

    def check_entry(self, key: str, value: Any) -> None:
        """:func:`check_entry` against this table's settings."""
        check_entry(key, value, self.settings)

    def setting(self, key: str) -> Any:
        """The value in force of a declared setting: the entry if valid, else its default."""
        return self.settings[key].value(self._entries)

    @property
    def commands_enabled(self) -> bool:
        return self.setting(COMMANDS_ENABLED)

    def settings_view(self) -> Mapping[str, Any]:
        """What a decider sees: the control table, with every declared setting at the value in force."""
        return MappingProxyType({**self._entries, **{k: s.value(self._entries) for k, s in self.settings.items()}})

    def snapshot(self) -> dict[str, Any]:
        """``{"offset", "entries"}`` as GET /control answers it."""
        return {"offset": self.offset, "entries": dict(self._entries)}
