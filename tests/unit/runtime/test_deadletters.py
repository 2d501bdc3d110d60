"""How GET /deadletters describes a dead-letter record."""

import pytest

from projector.runtime.deadletters import describe

HEADERS = [("projector.reason", b"key_mismatch"), ("projector.error", b"differs"), ("projector.source", b"ev/1/7")]


def test_headers_become_reason_error_and_source():
    row = describe(b"acc-1", HEADERS, b'{"aggregate_id": "acc-1"}')
    assert row == {"reason": "key_mismatch", "error": "differs", "source": "ev/1/7", "aggregate_id": "acc-1", "key": "acc-1"}


@pytest.mark.parametrize(
    "value, expected",
    [
        (b'{"aggregate_id": "other"}', "other"),  # key_mismatch: the envelope's id, not the key
        (b'[{"aggregate_id": "other"}, {"aggregate_id": "x"}]', "other"),
        (b"{not json", "acc-1"),
        (b"", "acc-1"),
        (None, "acc-1"),
        (b'{"aggregate_id": 5}', "acc-1"),
        (b"[]", "acc-1"),
    ],
)
def test_aggregate_id_comes_from_the_envelope_when_it_has_one(value, expected):
    assert describe(b"acc-1", HEADERS, value)["aggregate_id"] == expected


def test_missing_key_and_headers_are_null():
    assert describe(None, None, None) == {"reason": None, "error": None, "source": None, "aggregate_id": None, "key": None}
