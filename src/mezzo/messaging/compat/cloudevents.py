"""CloudEvents 1.0 over HTTP, binary and structured mode, to and from Mezzo messages.

Context attributes become message attributes named ``ce.<attribute>``; ``id`` is the
message id (so a re-sent event is deduplicated); ``datacontenttype`` is the content
type; the ``partitionkey`` extension is the ordering key (as in the Kafka binding). The
distributed tracing extension (``traceparent``, ``tracestate``) is also the message's own trace
context, which consumers and push endpoints continue.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mezzo.messaging.codec import is_json
from mezzo.messaging.service import Delivered, PublishMessage

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
REQUIRED = ("id", "source", "type")
_SKIP = {"specversion", "id", "data", "data_base64", "datacontenttype", "partitionkey"}
TRACING = ("traceparent", "tracestate")  # the distributed tracing extension


class CloudEventError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _check(attrs: Mapping[str, Any], prefix: str = "") -> None:
    if attrs.get("specversion") != "1.0":
        raise CloudEventError(f"{prefix}specversion", "must be \"1.0\"")
    for name in REQUIRED:
        if not isinstance(attrs.get(name), str) or not attrs[name]:
            raise CloudEventError(f"{prefix}{name}", "is required (a non-empty string)")


def _attributes(attrs: Mapping[str, Any]) -> dict[str, str]:
    out = {f"ce.{k}": v if isinstance(v, str) else str(v) for k, v in attrs.items() if k not in _SKIP}
    out.update({k: attrs[k] for k in TRACING if isinstance(attrs.get(k), str) and attrs[k]})
    return out


def from_structured(event: Any, prefix: str = "") -> PublishMessage:
    if not isinstance(event, dict):
        raise CloudEventError(prefix.rstrip(".") or "body", "a CloudEvent is a JSON object")
    _check(event, prefix)
    fields: dict[str, Any] = {
        "id": event["id"], "key": event.get("partitionkey"), "attributes": _attributes(event),
        "contentType": event.get("datacontenttype") or ("application/json" if "data" in event else None),
    }
    if "data_base64" in event:
        fields["dataBase64"] = event["data_base64"]
    elif "data" in event:
        fields["data"] = event["data"]
    return PublishMessage.model_validate(fields)


def from_binary(headers: Mapping[str, str], body: bytes) -> PublishMessage:
    attrs = {k[3:].lower(): v for k, v in headers.items() if k.lower().startswith("ce-")}
    _check(attrs, "ce-")
    ctype = headers.get("content-type")
    return PublishMessage.model_validate({
        "id": attrs["id"], "key": attrs.get("partitionkey"), "attributes": _attributes(attrs),
        "contentType": ctype or "application/octet-stream",
        "dataBase64": base64.b64encode(body).decode(),
    })


def to_structured(message: Delivered, default_source: str) -> dict[str, Any]:
    """The message as a structured-mode CloudEvent (what push subscriptions POST)."""
    attrs = {k[3:]: v for k, v in message.attributes.items() if k.startswith("ce.")}
    event: dict[str, Any] = {
        "specversion": "1.0", "id": message.id, "source": attrs.pop("source", default_source),
        "type": attrs.pop("type", "mezzo.message"), "topic": message.topic,
        "time": attrs.pop("time", message.published_at.astimezone(UTC).isoformat().replace("+00:00", "Z")),
        **attrs,
    }
    if message.content_type:
        event["datacontenttype"] = message.content_type
    if message.key:
        event["partitionkey"] = message.key
    if message.data_base64 is not None:
        event["data_base64"] = message.data_base64
    elif message.data is not None or is_json(message.content_type):
        event["data"] = message.data
    return event


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
