"""What a broker engine provides to the messaging service: partitioned logs with consumer-group queues.

The service layer (``service.py``) adds what engines lack: validation, dedup,
delays, retry backoff, dead letters, filters and push delivery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from mezzo.messaging.model import TopicSpec


class Feature(StrEnum):
    PARTITIONS = "partitions"
    KEY_ORDERING = "key-ordering"  # one message per key in flight per group
    SEEK = "seek"
    RETENTION = "retention"


@dataclass(frozen=True, slots=True)
class Record:
    """A message as stored: opaque payload plus what routing and delivery need."""

    id: str
    payload: bytes  # the encoded message (codec.py)
    key: str | None = None
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class Position:
    partition: int
    offset: int
    duplicate: bool = False  # the id was already stored within the dedup window


@dataclass(slots=True)
class Delivery:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    payload: bytes
    attempt: int  # 1 on first delivery
    receipt: str  # opaque; identifies this delivery for ack/nack


@dataclass(slots=True)
class GroupStats:
    group: str
    lag: int  # messages not yet acked
    in_flight: int
    partitions: dict[int, dict[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class TopicStats:
    topic: str
    partitions: int
    messages: int
    bytes: int
    first_offsets: list[int]
    next_offsets: list[int]


class TooManyGroupsError(RuntimeError):
    """A topic reached its limit of consumer groups."""


class StaleReceiptError(LookupError):
    """The receipt's delivery already timed out, was acked, or was redelivered."""


class Broker(Protocol):
    engine: str  # embedded, nats, redis, postgres
    features: frozenset[Feature]
    max_groups: int  # consumer groups per topic; beyond it fetch raises TooManyGroupsError
    record_limit: int | None  # the largest payload (envelope) the engine stores; None: no limit of its own

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> bool: ...

    async def ensure_topic(self, topic: str, spec: TopicSpec) -> None:
        """Create the topic or update its settings (partitions only grow)."""

    async def delete_topic(self, topic: str) -> None: ...

    def topics(self) -> list[str]:
        """Topics this node has ensured (engines track them in memory; ensure_topic runs on every node)."""

    async def publish(self, topic: str, records: list[Record], partitions: list[int]) -> list[Position]:
        """Append each record to its partition; durable when this returns."""

    async def fetch(
        self, topic: str, group: str, max_messages: int, wait: float, ack_timeout: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries for ``group``, waiting up to ``wait`` for the first."""

    async def ack(self, topic: str, group: str, receipts: list[str]) -> None:
        """Done with these deliveries; raises StaleReceiptError for unknown or outdated receipts."""

    async def nack(self, topic: str, group: str, receipts: list[str], delay: float) -> None:
        """Redeliver these after ``delay`` seconds; raises StaleReceiptError for any not in flight."""

    async def in_flight(self, topic: str, group: str, receipts: list[str]) -> dict[str, Delivery]:
        """The deliveries (with payload and attempt) of those receipts that are still in flight."""

    async def seek(self, topic: str, group: str, positions: dict[int, int]) -> dict[int, int]:
        """Move ``group`` to these offsets (per partition, clamped to what exists); returns them."""

    def has_topic(self, topic: str) -> bool: ...

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the first offset stored at or after ``timestamp_ms``."""

    async def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        """(first offset, next offset) per partition."""

    async def read(self, topic: str, partition: int, offset: int, max_messages: int) -> list[Delivery]:
        """Read without a group (inspecting dead letters, tracing)."""

    async def groups(self, topic: str) -> list[str]: ...
    async def delete_group(self, topic: str, group: str) -> bool:
        """Forget a group's progress; False when it did not exist."""
    async def group_stats(self, topic: str, group: str) -> GroupStats:
        """Raises LookupError when the group has never consumed the topic."""

    async def topic_stats(self, topic: str) -> TopicStats: ...
    async def enforce_retention(self, now_ms: int) -> None: ...
