"""What Dapr's publish API over HTTP (``dapr.py``) and over gRPC (``dapr_grpc.py``) share.

The pub/sub name, the checks of a request's names and caller, how a Dapr request's data,
content type and metadata become a Mezzo message, and Dapr's errors, each with the HTTP status and
``errorCode`` Dapr answers over HTTP and the gRPC status code and ``ErrorInfo`` reason it answers
over gRPC (docs.dapr.io, "Error codes"), so both transports refuse the same request the same way.

Metadata (``?metadata.KEY=`` over HTTP, the request's ``metadata`` map over gRPC): ``namespace``
(default ``default``), ``ttlInSeconds`` (the message's TTL; empty: none, as Dapr), ``partitionKey``
(its ordering key), ``rawPayload`` (a Go boolean, as Dapr parses it: Mezzo never wraps data in an
envelope, so it changes only ``application/cloudevents+json`` data, which is then stored as sent,
not read as a CloudEvent, as Dapr publishes a raw payload). Other keys are accepted and ignored.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

from mezzo.jsonutil import loads
from mezzo.messaging.compat.cloudevents import STRUCTURED, CloudEventError, from_structured
from mezzo.messaging.service import MessagingService, PublishMessage, PublishResult
from mezzo.node.auth import Principal, Verb
from mezzo.resources.types import NAME_PATTERN

PUBSUB_NAME = "mezzo"
DEFAULT_CONTENT_TYPE = "text/plain"  # Dapr's, for data published without a content type
DEFAULTS = {"specversion": "1.0", "source": "Dapr", "type": "com.dapr.event.sent"}  # Dapr's, for events without them
FEATURES = ("MESSAGE_TTL", "BULK_PUBSUB")  # Dapr's names for what this pub/sub does (GetMetadata)
MAX_TTL = 10**9
GO_TRUE, GO_FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


class DaprError(Exception):
    """A refusal as Dapr words it: HTTP status and ``errorCode``; gRPC status code name and reason."""

    def __init__(self, status: int, code: str, grpc: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.grpc, self.reason, self.message = status, code, grpc, reason, message

    def body(self) -> dict[str, str]:
        """The HTTP error body: ``{"errorCode", "message"}``."""
        return {"errorCode": self.code, "message": self.message}


def pubsub_not_found(name: str) -> DaprError:
    if not name:
        return DaprError(404, "ERR_PUBSUB_EMPTY", "INVALID_ARGUMENT", "DAPR_PUBSUB_NAME_EMPTY",
                         f"pubsub name is empty; Mezzo's is named '{PUBSUB_NAME}'")
    return DaprError(404, "ERR_PUBSUB_NOT_FOUND", "INVALID_ARGUMENT", "DAPR_PUBSUB_NOT_FOUND",
                     f"pubsub {name} not found; Mezzo's is named '{PUBSUB_NAME}'")


def bad_name(message: str) -> DaprError:
    return DaprError(404, "ERR_TOPIC_NAME_EMPTY", "INVALID_ARGUMENT", "DAPR_PUBSUB_TOPIC_NAME_EMPTY", message)


def forbidden(topic: str) -> DaprError:
    return DaprError(403, "ERR_PUBSUB_FORBIDDEN", "PERMISSION_DENIED", "DAPR_PUBSUB_FORBIDDEN",
                     f"topic {topic} is not allowed for this token")


def bad_event(message: str) -> DaprError:
    return DaprError(400, "ERR_PUBSUB_CLOUD_EVENTS_SER", "INVALID_ARGUMENT", "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
                     message)


def bad_metadata(message: str) -> DaprError:
    return DaprError(400, "ERR_PUBSUB_REQUEST_METADATA", "INVALID_ARGUMENT", "DAPR_PUBSUB_METADATA_DESERIALIZATION",
                     f"failed deserializing metadata. Error: {message}")


def raw_payload(metadata: Mapping[str, str]) -> bool:
    """``rawPayload`` as Dapr reads it (Go's ``strconv.ParseBool``; absent or empty: false)."""
    value = metadata.get("rawPayload")
    if not value:
        return False
    if value in GO_TRUE:
        return True
    if value in GO_FALSE:
        return False
    raise bad_metadata(f"rawPayload value must be a valid boolean: actual is '{value}'")


def publish_failed(topic: str, exc: Exception) -> DaprError:
    return DaprError(500, "ERR_PUBSUB_PUBLISH_MESSAGE", "INTERNAL", "DAPR_PUBSUB_PUBLISH_MESSAGE",
                     f"error when publishing to topic {topic}: {exc}")


def namespace_of(metadata: Mapping[str, str]) -> str:
    return metadata.get("namespace") or "default"


def check(pubsubname: str, topic: str, namespace: str, caller: Principal) -> None:
    """The pub/sub is Mezzo's, the topic and namespace are names, and the caller may use the namespace."""
    if pubsubname != PUBSUB_NAME:
        raise pubsub_not_found(pubsubname)
    if not topic:
        raise bad_name(f"topic is empty in pubsub {pubsubname}")
    if not re.match(NAME_PATTERN, topic):
        raise bad_name(f"invalid topic name {topic!r} (lowercase letters, digits, '-', '.' and '_')")
    if not re.match(NAME_PATTERN, namespace):
        raise bad_name(f"invalid metadata.namespace {namespace!r}")
    if not caller.can(Verb.USE, namespace):
        raise forbidden(topic)


def to_message(data: bytes, content_type: str | None, metadata: Mapping[str, str]) -> PublishMessage:
    """The message a Dapr publish makes: the data as it is (``text/plain`` without a content type), or
    a CloudEvent itself with ``application/cloudevents+json`` (completed with Dapr's defaults) unless
    ``rawPayload`` is true. Raises ``DaprError`` (bad CloudEvent or metadata)."""
    ctype = (content_type or DEFAULT_CONTENT_TYPE).split(";")[0].strip() or DEFAULT_CONTENT_TYPE
    raw = raw_payload(metadata)
    try:
        if ctype.lower() == STRUCTURED and not raw:
            message = from_structured(with_defaults(loads(data)))
        else:
            message = PublishMessage.model_validate({"contentType": ctype, "dataBase64": base64.b64encode(data).decode()})
        ttl = metadata.get("ttlInSeconds")
        if ttl:  # empty: no TTL, as Dapr
            message.ttl = _ttl(ttl)
        key = metadata.get("partitionKey")
        if key:
            if len(key) > 512:
                raise ValueError("metadata.partitionKey is longer than 512 characters")
            message.key = key
    except (CloudEventError, ValueError) as exc:
        raise bad_event(str(exc)) from None
    return message


def _ttl(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TTL:
        raise ValueError(f"metadata.ttlInSeconds must be a positive number of seconds, not {value!r}")
    return seconds


def with_defaults(event: Any) -> Any:
    """A custom CloudEvent as Dapr completes it before publishing."""
    if isinstance(event, dict):
        event = {**DEFAULTS, "id": uuid.uuid4().hex, **{k: v for k, v in event.items() if v is not None}}
    return event


async def publish(service: MessagingService, namespace: str, topic: str, messages: list[PublishMessage],
                  user: str) -> list[PublishResult]:
    """Publish as ``:publish`` does (an unknown topic is created); any refusal is Dapr's publish error."""
    try:
        return await service.publish(namespace, topic, messages, user)
    except Exception as exc:
        raise publish_failed(topic, exc) from exc
