"""Dapr's publish API on the API port, so Dapr apps and SDKs publish to Mezzo unchanged.

``POST /v1.0/publish/{pubsubname}/{topic}``: ``mezzo`` is the default broker's name;
the body becomes the event data (Dapr's default content type is text/plain), or is a
CloudEvent itself with ``application/cloudevents+json`` (missing ``specversion``,
``source`` and ``type`` get Dapr's defaults, as Dapr does; a missing ``id`` a new one).
``metadata.ttlInSeconds`` sets a TTL; the request's ``traceparent`` goes with the
message, as with ``:publish``. Answers as Dapr documents: 204 delivered, 403
forbidden, 404 unknown pubsub or topic, 500 failed; errors carry Dapr's
``{"errorCode", "message"}`` body.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mezzo.jsonutil import loads
from mezzo.messaging.compat.cloudevents import STRUCTURED, CloudEventError, from_structured
from mezzo.messaging.service import MessagingService, PublishMessage
from mezzo.messaging.tracecontext import carry_trace
from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller
from mezzo.resources.types import NAME_PATTERN

router = APIRouter(tags=["dapr"])
PUBSUB_NAME = "mezzo"
DEFAULTS = {"specversion": "1.0", "source": "Dapr", "type": "com.dapr.event.sent"}  # Dapr's, for events without them


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errorCode": code, "message": message}, status_code=status)


@router.post("/v1.0/publish/{pubsubname}/{topic}", status_code=204, summary="Dapr-compatible publish")
async def dapr_publish(pubsubname: str, topic: str, request: Request, caller: Caller) -> Response:
    namespace = request.query_params.get("metadata.namespace", "default")
    if pubsubname != PUBSUB_NAME:
        return _error(404, "ERR_PUBSUB_NOT_FOUND", f"pubsub {pubsubname} not found; Mezzo's is named '{PUBSUB_NAME}'")
    if not re.match(NAME_PATTERN, topic):
        return _error(404, "ERR_TOPIC_NAME_EMPTY", f"invalid topic name {topic!r}")
    if not re.match(NAME_PATTERN, namespace):
        return _error(404, "ERR_TOPIC_NAME_EMPTY", f"invalid metadata.namespace {namespace!r}")
    if not caller.can(Verb.USE, namespace):
        return _error(403, "ERR_PUBSUB_FORBIDDEN", f"topic {topic} is not allowed for this token")
    body = await request.body()
    ctype = request.headers.get("content-type", "text/plain").split(";")[0].strip()
    ttl = request.query_params.get("metadata.ttlInSeconds")
    try:
        if ctype == STRUCTURED:
            message = from_structured(_with_defaults(loads(body)))
        else:
            message = PublishMessage.model_validate({"contentType": ctype, "dataBase64": base64.b64encode(body).decode()})
        if ttl is not None:
            seconds = float(ttl)
            if not math.isfinite(seconds) or not 0 < seconds <= 10**9:
                raise ValueError("metadata.ttlInSeconds must be a positive number of seconds")
            message.ttl = seconds
    except (CloudEventError, ValueError) as exc:
        return _error(400, "ERR_PUBSUB_CLOUD_EVENTS_SER", str(exc))
    carry_trace(request, [message])
    service: MessagingService = request.app.state.node.service(MessagingService)
    try:
        await service.publish(namespace, topic, [message], caller.name)
    except Exception as exc:
        return _error(500, "ERR_PUBSUB_PUBLISH_MESSAGE", f"error when publishing to topic {topic}: {exc}")
    return Response(status_code=204)


def _with_defaults(event: Any) -> Any:
    """A custom CloudEvent as Dapr completes it before publishing."""
    if isinstance(event, dict):
        event = {**DEFAULTS, "id": uuid.uuid4().hex, **{k: v for k, v in event.items() if v is not None}}
    return event
