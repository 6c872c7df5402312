"""Dapr's publish API on the API port, so Dapr apps and SDKs publish to Mezzo unchanged.

``POST /v1.0/publish/{pubsubname}/{topic}``: ``mezzo`` is the default broker's name;
the body becomes the event data (Dapr's default content type is text/plain), or is a
CloudEvent itself with ``application/cloudevents+json`` (missing ``specversion``,
``source`` and ``type`` get Dapr's defaults, as Dapr does; a missing ``id`` a new one).
``metadata.ttlInSeconds`` sets a TTL, ``metadata.partitionKey`` the ordering key; the
request's ``traceparent`` goes with the message, as with ``:publish``. Answers as Dapr
documents: 204 delivered, 403 forbidden, 404 unknown pubsub or topic, 500 failed; errors
carry Dapr's ``{"errorCode", "message"}`` body. What this shares with Dapr's gRPC API
(``dapr_grpc.py``) is in ``dapr_common.py``.

``GET /v1.0/healthz`` and ``/v1.0/healthz/outbound`` answer 204 as Dapr's sidecar does, so
an SDK that waits for its sidecar (the Python ``DaprClient`` does, on ``DAPR_HTTP_ENDPOINT``)
can wait for Mezzo.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from mezzo.messaging.compat.dapr_common import DaprError, check, namespace_of, publish, to_message
from mezzo.messaging.service import MessagingService
from mezzo.messaging.tracecontext import carry_trace
from mezzo.node.auth import Principal
from mezzo.node.auth_module import bearer_token, principal
from mezzo.node.errors import Problem

router = APIRouter(tags=["dapr"])
METADATA = "metadata."


async def _caller(request: Request) -> Principal:
    """``Caller``, whose 401 for a missing token names Dapr's header too: Dapr clients send that one."""
    try:
        return await principal(request)
    except Problem as exc:
        if exc.status != 401 or bearer_token(request) is not None:
            raise
        raise Problem(401, "Unauthorized", "missing token: send it in dapr-api-token (as Dapr clients do) or as "
                      "Authorization: Bearer", type="unauthorized", headers=exc.headers) from None


Caller = Annotated[Principal, Depends(_caller)]


@router.post("/v1.0/publish/{pubsubname}/{topic}", status_code=204, summary="Dapr-compatible publish")
async def dapr_publish(pubsubname: str, topic: str, request: Request, caller: Caller) -> Response:
    metadata = {k[len(METADATA):]: v for k, v in request.query_params.items() if k.startswith(METADATA)}
    namespace = namespace_of(metadata)
    service: MessagingService = request.app.state.node.service(MessagingService)
    try:
        check(pubsubname, topic, namespace, caller)
        message = to_message(await request.body(), request.headers.get("content-type"), metadata)
        carry_trace(request, [message])
        await publish(service, namespace, topic, [message], caller.name)
    except DaprError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    return Response(status_code=204)


@router.get("/v1.0/healthz", status_code=204, summary="Dapr-compatible health (no token needed, as Dapr)")
async def dapr_healthz(request: Request) -> Response:
    return _health(request, "ERR_HEALTH_NOT_READY")


@router.get("/v1.0/healthz/outbound", status_code=204, summary="Dapr-compatible outbound health (SDKs wait on it)")
async def dapr_healthz_outbound(request: Request) -> Response:
    return _health(request, "ERR_OUTBOUND_HEALTH_NOT_READY")


def _health(request: Request, code: str) -> Response:
    """204 once the node has started (its listeners serve) and runs messaging; 500 otherwise, as Dapr."""
    node = request.app.state.node
    if node.started and node.has(MessagingService):
        return Response(status_code=204)
    return JSONResponse({"errorCode": code, "message": "Mezzo is not ready"}, status_code=500)
