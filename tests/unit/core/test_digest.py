"""The digest of a table partition: order-independent, and any changed, added or dropped row changes it."""

from __future__ import annotations

import random

from projector.core.digest import Digest, digest_rows

ROWS = [(f"acct-{i}".encode(), f'{{"balance":{i}}}'.encode()) for i in range(200)]


def test_the_order_of_the_rows_does_not_matter():
    shuffled = ROWS[:]
    random.Random(3).shuffle(shuffled)
    assert digest_rows(shuffled) == digest_rows(ROWS)
    assert digest_rows(ROWS)[0] == 200


def test_a_changed_added_or_dropped_row_changes_the_digest():
    rows, digest = digest_rows(ROWS)
    changed = ROWS[:]
    changed[7] = (changed[7][0], b'{"balance":8}')
    assert digest_rows(changed)[1] != digest
    assert digest_rows(ROWS[1:])[1] != digest
    assert digest_rows([*ROWS, (b"x", b"{}")])[1] != digest
    # Key and value are kept apart: moving a byte from one to the other is a change.
    assert digest_rows([(b"ab", b"c")]) != digest_rows([(b"a", b"bc")])


def test_no_rows_and_the_format():
    assert digest_rows([]) == (0, "0" * 16)
    d = Digest()
    d.add(b"k", b"v")
    assert len(d.hex) == 16 and int(d.hex, 16) == d.total and d.rows == 1
