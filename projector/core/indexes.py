"""Secondary indexes of read models (``INDEXES``, CONTRACT §6): pure, no Faust, no Kafka.

A read model may declare ``INDEXES = {name: function(value) -> str | list[str] | None}``.
Each row value is indexed under every value its functions give: ``None`` or
``[]`` puts the row in no entry of that index, a list in one entry per
distinct string.

The entries of table ``t`` live in their own table, :func:`index_table`
(``_t_idx``), in the partition of the row they point to, so a worker holds
the entries of exactly the rows it holds, and the index is restored with the
table from its own changelog. An entry's key is
``<index name>\\0<index value>\\0<row key>`` (its value :data:`ENTRY`): the rows
with one index value are a key range, in row-key order.

Index values that cannot be keyed are skipped (the row is simply not found
under them): the empty string, a string containing ``"\\0"``, one that is not
valid Unicode, and one longer than :data:`MAX_INDEX_VALUE_BYTES` in UTF-8.

A function that raises, or returns anything but a string, a list of strings
or None, makes the record that produced the value a ``fold_error`` (the
engine computes the new entries where it folds, see
:meth:`projector.core.engine.Engine.fold`).

Every function here takes the physical table name explicitly: the same model
may be stored under another table name (say, while a new version is built).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

log = logging.getLogger(__name__)

SEP = b"\0"
#: The value of every index entry (the entry's key says it all).
ENTRY = b"1"
#: The longest index value that is indexed, in UTF-8 bytes (the longest key parameter the HTTP API takes).
MAX_INDEX_VALUE_BYTES = 1024


class BadIndexValue(ValueError):
    """An index function raised, or returned something that is not a str, a list of str or None."""


class _Batch(Protocol):
    def put(self, table: str, partition: int, key: bytes, value: Optional[bytes]) -> None: ...


def index_table(table: str) -> str:
    """The table that holds the index entries of table ``table``."""
    return f"_{table}_idx"


def is_index_table(name: str) -> bool:
    """True for a name :func:`index_table` gives (read-model names never start with ``_``)."""
    return name.startswith("_") and name.endswith("_idx")


def entry_prefix(index: str, value: str) -> bytes:
    """The keys of every entry of ``index`` for ``value``: the prefix of a scan."""
    return index.encode("utf-8") + SEP + value.encode("utf-8") + SEP


def entry_key(index: str, value: str, key: bytes) -> bytes:
    return entry_prefix(index, value) + key


def indexable(value: str) -> bool:
    """True when ``value`` can be an index entry: non-empty, no NUL, valid Unicode, not too long."""
    if not value or "\0" in value:
        return False
    try:
        return len(value.encode("utf-8")) <= MAX_INDEX_VALUE_BYTES
    except UnicodeEncodeError:  # a lone surrogate
        return False


def index_signature(model: Any, value: Any) -> tuple:
    """What ``value`` gives each index of ``model``, in declaration order: cheap to compare (user code: may raise).

    Each item is None, a string, or a frozenset of strings (a list's). Raises
    :class:`BadIndexValue` when a function raises or returns anything else.
    Unindexable strings are still in it: :func:`signature_keys` leaves them out.
    """
    if value is None:
        return ()
    out = []
    for name, function in model.indexes.items():
        try:
            result = function(value)
        except Exception as exc:
            raise BadIndexValue(f"{model.name}: index {name!r} raised {type(exc).__name__}: {exc}") from exc
        if result is None or isinstance(result, str):
            out.append(result)
        elif isinstance(result, list) and all(isinstance(v, str) for v in result):
            out.append(frozenset(result))
        else:
            raise BadIndexValue(f"{model.name}: index {name!r} must return a string, a list of strings or None, "
                                f"got {type(result).__name__}: {result!r:.200}")
    return tuple(out)


def signature_keys(model: Any, key: bytes, signature: tuple) -> set[bytes]:
    """The index entries (keys) of row ``key`` whose values are ``signature`` (:func:`index_signature`)."""
    keys = set()
    for name, result in zip(model.indexes, signature):
        if result is None:
            continue
        for v in (result,) if isinstance(result, str) else result:
            if indexable(v):
                keys.add(entry_key(name, v, key))
    return keys


def index_values(model: Any, name: str, value: Any) -> set[str]:
    """The values under which row value ``value`` is found in index ``name`` of ``model`` (user code: may raise).

    Raises :class:`BadIndexValue` as :func:`index_signature`; unindexable strings are left out.
    """
    if value is None:
        return set()
    result = index_signature(model, value)[list(model.indexes).index(name)]
    if result is None:
        return set()
    return {v for v in ((result,) if isinstance(result, str) else result) if indexable(v)}


def index_keys(model: Any, key: bytes, value: Any) -> set[bytes]:
    """The index entries (keys) of the row ``key`` with value ``value``; none for None.

    May raise :class:`BadIndexValue`.
    """
    if value is None or not model.indexes:
        return set()
    return signature_keys(model, key, index_signature(model, value))


def update_index(batch: _Batch, table: str, partition: int, key: bytes, model: Any, old_value: Any,
                 new_value: Any, *, new_signature: Optional[tuple] = None) -> None:
    """Put into ``batch`` the index changes of row ``key`` of ``table`` going from ``old_value`` to ``new_value``.

    Entries the old value had and the new one has not are deleted, new ones
    are put; unchanged ones are not written again. ``new_signature``: the new
    value's :func:`index_signature` when already computed (it raises for a
    bad index function: compute it where such an error can reject the
    record). The old value's is computed again: if that raises (the index
    function changed since), it is logged and no entry is deleted.
    """
    if not model.indexes:
        return
    if new_signature is None:
        new_signature = index_signature(model, new_value)
    try:
        old_signature = index_signature(model, old_value)
    except BadIndexValue:
        log.exception("%s: the index entries of the stored row %r cannot be computed; not deleted", table, key)
        old_signature = ()
    if old_signature == new_signature:
        return
    old_keys = signature_keys(model, key, old_signature)
    new_keys = signature_keys(model, key, new_signature)
    itable = index_table(table)
    for k in sorted(old_keys - new_keys):
        batch.put(itable, partition, k, None)
    for k in sorted(new_keys - old_keys):
        batch.put(itable, partition, k, ENTRY)
