"""Reading the dead-letter topic (``<events>.deadletter``)."""

from __future__ import annotations

from typing import Any, Optional

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from projector.core.engine import HEADER_ERROR, HEADER_REASON, HEADER_SOURCE
from projector.runtime.config import Settings
from projector.runtime.kafka import client_options


def _text(raw: Optional[bytes]) -> Optional[str]:
    return raw.decode("utf-8", "replace") if raw is not None else None


def _aggregate_id(key_text: Optional[str], value: Optional[bytes]) -> Optional[str]:
    """The envelope's aggregate_id when the value has one (it differs from the key on
    ``key_mismatch``); otherwise the key, which names the aggregate by contract."""
    try:
        decoded = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return key_text
    if isinstance(decoded, list) and decoded:
        decoded = decoded[0]
    if isinstance(decoded, dict) and isinstance(decoded.get("aggregate_id"), str):
        return decoded["aggregate_id"]
    return key_text


def describe(key: Optional[bytes], headers: Any, value: Optional[bytes] = None) -> dict[str, Any]:
    h = {k: v for k, v in (headers or ())}
    key_text = _text(key)
    return {
        "reason": _text(h.get(HEADER_REASON)),
        "error": _text(h.get(HEADER_ERROR)),
        "source": _text(h.get(HEADER_SOURCE)),
        "aggregate_id": _aggregate_id(key_text, value),
        "key": key_text,
    }


async def read_recent(settings: Settings, limit: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters, newest first, across all partitions of the topic."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=int(timeout * 1000),
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.deadletter_topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.deadletter_topic) or set()
        tps = [TopicPartition(settings.deadletter_topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - limit))
        rows: list[tuple[int, int, dict[str, Any]]] = []
        remaining = {tp for tp in tps if ends[tp] > begins[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=int(timeout * 1000))
            if not batch:
                break
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        rows.append((r.timestamp, r.offset, describe(r.key, r.headers, r.value)))
                    if r.offset >= ends[tp] - 1:
                        remaining.discard(tp)
        rows.sort(key=lambda x: (x[0], x[1]), reverse=True)
        return [row for _, _, row in rows[:limit]]
    finally:
        await consumer.stop()
