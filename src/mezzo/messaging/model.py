"""Messaging types shared by the API, manifests and the SDK: Topic and Subscription kinds, messages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from mezzo.resources.kinds import Column, KindSpec
from mezzo.resources.model import SpecModel
from mezzo.resources.types import ByteSize, Duration, Name

TopicName = Name  # topics and groups are named like every resource: lowercase, digits, - . _
GroupName = Name
Tag = Annotated[str, StringConstraints(pattern=r"^[^\s,|]{1,128}$")]
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


class TopicSpec(SpecModel):
    """A durable topic: partitions, retention, limits."""

    partitions: int = Field(1, ge=1, le=256, description="ordering holds per key within a partition")
    retention: Duration = Field(7 * 86400.0, gt=0, description="how long messages are kept")
    retention_bytes: ByteSize | None = Field(None, gt=0, description="size cap per partition")
    max_message_bytes: ByteSize = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0, le=64 * 1024 * 1024)
    segment_bytes: ByteSize = Field(
        64 * 1024 * 1024, ge=4096, le=1024**3,
        description="retention removes whole segments of this size (for new segments)")
    dedup_window: Duration = Field(120.0, ge=0, le=7 * 86400, description="a message id seen within it is stored once")
    trace: bool = Field(False, description="record every message's path (publish, deliveries, acks)")


class Backoff(SpecModel):
    initial: Duration = Field(0.1, gt=0)
    max: Duration = Field(10.0, gt=0)
    multiplier: float = Field(2.0, ge=1.0, le=10.0)

    def delay(self, attempt: int) -> float:
        """Delay before delivery attempt ``attempt + 1`` (attempt counts from 1)."""
        return float(min(self.max, self.initial * self.multiplier ** max(attempt - 1, 0)))


class SubscriptionSpec(SpecModel):
    """A consumer group's settings; with ``endpoint`` Mezzo pushes messages as CloudEvents over HTTP."""

    topic: TopicName
    group: GroupName
    endpoint: AnyHttpUrl | None = None
    max_deliveries: int = Field(16, ge=1, le=1000, description="after this many attempts: dead letter")
    backoff: Backoff = Field(default_factory=Backoff)
    dead_letter_topic: TopicName | None = None
    filter: str | None = Field(None, description="e.g. \"tags has 'paid' and attributes.region == 'eu'\"")
    ack_timeout: Duration = Field(30.0, gt=0, description="redeliver when not acked within it")
    max_in_flight: int = Field(16, ge=1, le=10_000, description="push deliveries at once")
    timeout: Duration = Field(30.0, gt=0, description="push request timeout")

    @model_validator(mode="after")
    def _dead_letters_elsewhere(self) -> SubscriptionSpec:
        if self.dead_letter_topic == self.topic:
            raise ValueError("deadLetterTopic must differ from topic (dead letters would come back forever)")
        return self

    @field_validator("filter")
    @classmethod
    def _parse_filter(cls, value: str | None) -> str | None:
        if value is not None:
            from mezzo.messaging.filters import compile_filter

            compile_filter(value)
        return value


TOPIC_KIND = KindSpec(
    kind="Topic", spec=TopicSpec, plural="topics", short_names=("tp",),
    columns=(Column("PARTITIONS", "partitions"), Column("RETENTION", "retention")),
    description="A durable topic with partitions and retention.",
)
SUBSCRIPTION_KIND = KindSpec(
    kind="Subscription", spec=SubscriptionSpec, plural="subscriptions", short_names=("sub",),
    columns=(Column("TOPIC", "topic"), Column("GROUP", "group"), Column("ENDPOINT", "endpoint")),
    description="A consumer group; with an endpoint, messages are pushed as CloudEvents.",
)


class OutMessage(BaseModel):
    """A message as consumers receive it."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    tags: list[str] = Field(default_factory=list)
    attributes: dict[str, str] = Field(default_factory=dict)
    content_type: str | None = Field(None, alias="contentType")
    data: Any = None  # JSON value when the content type is JSON, else text
    data_base64: str | None = Field(None, alias="dataBase64")  # when not UTF-8 text
    published_at: datetime = Field(alias="publishedAt")
    attempt: int = 1
    receipt: str | None = None


__all__ = ["SUBSCRIPTION_KIND", "TOPIC_KIND", "Backoff", "OutMessage", "SubscriptionSpec", "TopicSpec"]
