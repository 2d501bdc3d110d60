"""Kafka's default partitioner: murmur2 of the key bytes, as the Java client computes it."""

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
