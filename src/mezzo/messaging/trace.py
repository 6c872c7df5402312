"""Message trace (as RocketMQ's): for a topic with ``trace: true``, every step of every message is recorded.

Events go to a hidden companion topic (``NAMESPACE/_trace.TOPIC`` in the broker,
a name no user topic can have), so they are as durable as messages and expire with
the topic's retention. Looking a message up scans that topic: it is a diagnostic
tool, not a hot path, and costs nothing for topics that do not enable it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from mezzo.messaging.backend import Broker, Record
from mezzo.messaging.model import TopicSpec


def trace_ref(namespace: str, topic: str) -> str:
    return f"{namespace}/_trace.{topic}"


class MessageTrace:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def enable(self, namespace: str, topic: str, spec: TopicSpec) -> None:
        companion = TopicSpec(partitions=1, retention=spec.retention, dedupWindow=0)
        await self.broker.ensure_topic(trace_ref(namespace, topic), companion)

    async def record(self, namespace: str, topic: str, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        now_ms = int(time.time() * 1000)
        records = [Record(uuid.uuid4().hex, orjson.dumps({"at": now_ms, **e}), None, now_ms) for e in events]
        await self.broker.publish(trace_ref(namespace, topic), records, [0] * len(records))

    async def find(self, namespace: str, topic: str, message_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Every recorded step of ``message_id``, oldest first."""
        ref = trace_ref(namespace, topic)
        if not self.broker.has_topic(ref):
            return []
        needle = orjson.dumps(message_id)
        found: list[dict[str, Any]] = []
        first, next_offset = (await self.broker.bounds(ref))[0]
        offset = first
        while offset < next_offset and len(found) < limit:
            batch = await self.broker.read(ref, 0, offset, 5000)
            if not batch:
                break
            for d in batch:
                if needle in d.payload:  # cheap test before parsing
                    event = orjson.loads(d.payload)
                    if event.get("id") == message_id:
                        found.append(event)
            offset = batch[-1].offset + 1
        return found
