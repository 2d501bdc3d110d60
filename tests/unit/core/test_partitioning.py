"""projector.core.partitioning.partition_for: Kafka's default partitioner (CONTRACT §2).

Known values are the signed 32-bit results of the Java client's ``Utils.murmur2``
(Kafka's UtilsTest); Java's ``toPositive`` is ``& 0x7fffffff``. aiokafka's
murmur2 returns the same 32 bits as an unsigned int.
"""

from __future__ import annotations

import struct

import pytest
from aiokafka.partitioner import murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.core.partitioning import murmur2 as core_murmur2
from projector.core.partitioning import partition_for

JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def signed32(value: int) -> int:
    return struct.unpack("<i", struct.pack("<I", value & 0xFFFFFFFF))[0]


@pytest.mark.parametrize("key,expected", list(JAVA_MURMUR2.items()), ids=lambda v: repr(v)[:20])
def test_aiokafka_murmur2_agrees_with_the_java_client(key, expected):
    assert signed32(murmur2(key)) == expected


@pytest.mark.parametrize("key,expected", list(JAVA_MURMUR2.items()), ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("partitions", [1, 2, 3, 8, 12, 100, 2**31 - 1])
def test_partition_for_is_java_to_positive_modulo_partitions(key, expected, partitions):
    assert partition_for(key, partitions) == (expected & 0x7FFFFFFF) % partitions


def test_known_partitions_for_eight_partitions():
    # toPositive(h) % 8 of the Java values above, in the same order.
    assert [partition_for(k, 8) for k in JAVA_MURMUR2] == [4, 6, 0, 3, 5, 3]


def test_negative_hashes_are_not_taken_as_python_modulo():
    # For b"foobar" (a negative Java hash) the three readings give different partitions of 7:
    # the partitioner must clear the sign bit, not take abs() or Python's modulo of the signed value.
    h = JAVA_MURMUR2[b"foobar"]
    assert partition_for(b"foobar", 7) == (h & 0x7FFFFFFF) % 7
    assert (h & 0x7FFFFFFF) % 7 != h % 7
    assert (h & 0x7FFFFFFF) % 7 != abs(h) % 7


def test_empty_key_has_a_partition():
    assert partition_for(b"", 8) == (murmur2(b"") & 0x7FFFFFFF) % 8


def test_demo_account_keys_use_utf8_bytes():
    key = "acc-000001".encode("utf-8")
    assert partition_for(key, 8) == (murmur2(key) & 0x7FFFFFFF) % 8


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1024))
def test_partition_for_matches_the_java_port_for_any_key(key, partitions):
    expected = (murmur2(key) & 0x7FFFFFFF) % partitions
    assert partition_for(key, partitions) == expected
    assert 0 <= expected < partitions


@pytest.mark.parametrize("key, expected", sorted(JAVA_MURMUR2.items()))
def test_the_core_murmur2_agrees_with_the_java_client(key, expected):
    assert signed32(core_murmur2(key)) == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_the_core_murmur2_agrees_with_aiokafka(key):
    assert core_murmur2(key) == murmur2(key)
