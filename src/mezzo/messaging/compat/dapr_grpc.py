"""Dapr's gRPC API (``dapr.proto.runtime.v1.Dapr``) for pub/sub, so the Dapr SDKs that talk gRPC
(the Python, Go, .NET and Java ``DaprClient``s) publish and subscribe to Mezzo unchanged.

Served: ``PublishEvent``, ``BulkPublishEvent`` (and its ``Alpha1`` name), the streaming
subscription ``SubscribeTopicEventsAlpha1`` and ``GetMetadata``; every other method of the
service answers UNIMPLEMENTED naming these. Requests are checked, turned into messages and
refused exactly as Dapr's HTTP publish API on the API port (``dapr_common.py``): the pub/sub is
named ``mezzo``, ``metadata`` carries ``namespace``, ``ttlInSeconds`` and ``partitionKey``, the
token goes in the ``dapr-api-token`` metadata (or ``authorization: Bearer``), a ``traceparent``
in the call's metadata goes with the messages. Errors are Dapr's gRPC codes with its
``ErrorInfo`` reasons (domain ``dapr.io``): INVALID_ARGUMENT (unknown pub/sub, bad names, bad
CloudEvent or metadata), UNAUTHENTICATED (no, or a bad, token), PERMISSION_DENIED (a token not
scoped to the namespace), INTERNAL (the broker refused the message).

A streaming subscription is a consumer group of the topic (``dapr_stream.py``). The generated
stubs come from the ``dapr`` package (``pip install 'mezzo[dapr]'``); this module is imported
only when the node serves the port, so grpc costs nothing to a node or CLI that does not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import structlog
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2, pubsub_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import trace

import mezzo
from mezzo.messaging.compat.dapr_common import (
    FEATURES,
    PUBSUB_NAME,
    DaprError,
    check,
    namespace_of,
    publish,
    publish_failed,
    raw_payload,
    to_message,
)
from mezzo.messaging.compat.dapr_stream import Stream, Streams
from mezzo.messaging.service import MessageTooLarge, MessagingService, PublishMessage
from mezzo.messaging.tracecontext import carry, headers_trace_context
from mezzo.node.auth import Principal, TokenService
from mezzo.node.auth_module import token_in
from mezzo.node.grpc_listener import GrpcListener
from mezzo.telemetry.metrics import Metrics
from mezzo.telemetry.propagation import extract_context
from mezzo.telemetry.tracing import Tracing

log = structlog.get_logger("mezzo.messaging.dapr")
SERVICE = "dapr.proto.runtime.v1.Dapr"
DOMAIN = "dapr.io"  # of the ErrorInfo details Dapr sends with its errors
SERVED = ("PublishEvent", "BulkPublishEvent", "BulkPublishEventAlpha1", "SubscribeTopicEventsAlpha1", "GetMetadata")
MAX_MESSAGE = 65 * 1024 * 1024  # a topic takes messages up to 64 MiB (maxMessageBytes), as the HTTP API


def unauthenticated(message: str) -> DaprError:
    return DaprError(401, "ERR_UNAUTHENTICATED", "UNAUTHENTICATED", "", message)


class DaprApi(dapr_pb2_grpc.DaprServicer):
    """The servicer: the pub/sub methods; every other method of Dapr's service is UNIMPLEMENTED."""

    def __init__(self, node: Any, service: MessagingService) -> None:
        self.node = node
        self.service = service
        self.streams = Streams(service)
        metrics = node.service(Metrics)
        self.calls = metrics.counter("dapr", "grpc_calls", "total", "Calls to Dapr's gRPC API by method and code.",
                                     labels=("method", "code"))
        self.auth_failures = metrics.counter("auth", "failures", "total", "Rejected API calls by reason.",
                                             labels=("reason",))
        tracing = node.service(Tracing) if node.settings.tracing != "none" and node.has(Tracing) else None
        self.tracer = tracing.tracer("mezzo.messaging.dapr") if tracing is not None else None

    # the calls ---------------------------------------------------------------------------------

    async def PublishEvent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("PublishEvent", request, context, self._publish_event)

    async def BulkPublishEvent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("BulkPublishEvent", request, context, self._bulk_publish)

    async def BulkPublishEventAlpha1(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("BulkPublishEventAlpha1", request, context, self._bulk_publish)

    async def GetMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("GetMetadata", request, context, self._metadata)

    async def SubscribeTopicEventsAlpha1(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        code = "OK"
        try:
            caller = self._authenticate(context)
            stream = await Stream.open(self.streams, self.node, context, caller, requests)
            if stream is not None:  # None: the client left before it subscribed
                ending = await stream.run()
                if ending is not None:
                    raise ending
        except grpc.aio.AbortError:
            raise
        except DaprError as exc:
            code = exc.grpc
            await _abort(context, exc)
        except asyncio.CancelledError:  # the client cancelled the call (DaprClient's subscription.close())
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("Dapr streaming subscription failed")
            await context.abort(grpc.StatusCode.INTERNAL, "the server failed; the error is in its log")
        finally:
            self.calls.labels("SubscribeTopicEventsAlpha1", code).inc()

    # what they do ------------------------------------------------------------------------------

    async def _publish_event(self, request: Any, caller: Principal, headers: dict[str, str]) -> Any:
        metadata = dict(request.metadata)
        namespace = namespace_of(metadata)
        check(request.pubsub_name, request.topic, namespace, caller)
        message = to_message(request.data, request.data_content_type, metadata)
        carry(headers_trace_context(headers), [message])
        await publish(self.service, namespace, request.topic, [message], caller.name)
        return empty_pb2.Empty()

    async def _bulk_publish(self, request: Any, caller: Principal, headers: dict[str, str]) -> Any:
        """Each entry stands alone: one that is refused is listed in ``failedEntries`` with its
        reason, the others are published (in one batch). A broker failure fails the whole call
        (INTERNAL), as Dapr answers it, so an SDK raises instead of returning as if it had published."""
        metadata = dict(request.metadata)
        namespace, topic = namespace_of(metadata), request.topic
        check(request.pubsub_name, topic, namespace, caller)
        raw_payload(metadata)  # a bad rawPayload for the request refuses it whole, as Dapr
        seen: set[str] = set()
        failed: list[tuple[str, str]] = []
        messages: list[PublishMessage] = []
        owners: list[str] = []
        for index, entry in enumerate(request.entries):
            if not entry.entry_id:
                raise DaprError(400, "ERR_PUBSUB_EVENTS_SER", "INVALID_ARGUMENT", "DAPR_PUBSUB_MARSHAL_EVENTS",
                                f"entries[{index}]: entryId is required")
            if entry.entry_id in seen:
                raise DaprError(400, "ERR_PUBSUB_EVENTS_SER", "INVALID_ARGUMENT", "DAPR_PUBSUB_MARSHAL_EVENTS",
                                f"entries[{index}]: entryId {entry.entry_id!r} is duplicated")
            seen.add(entry.entry_id)
            try:
                messages.append(to_message(entry.event, entry.content_type, {**metadata, **entry.metadata}))
            except DaprError as exc:
                failed.append((entry.entry_id, exc.message))
                continue
            owners.append(entry.entry_id)
        carry(headers_trace_context(headers), messages)
        while messages:
            try:
                await self.service.publish(namespace, topic, messages, caller.name)
                break
            except MessageTooLarge as exc:  # that one is refused; the others are tried again
                failed.append((owners.pop(exc.index), publish_failed(topic, exc).message))
                messages.pop(exc.index)
            except Exception as exc:
                raise publish_failed(topic, exc) from exc
        return pubsub_pb2.BulkPublishResponse(failedEntries=[
            pubsub_pb2.BulkPublishResponseFailedEntry(entry_id=entry, error=error) for entry, error in failed])

    async def _metadata(self, request: Any, caller: Principal, headers: dict[str, str]) -> Any:
        """What a sidecar tells about itself: the app id is the token's name, the one component is
        Mezzo's pub/sub, and the subscriptions are this token's open streaming ones."""
        subscriptions = [metadata_pb2.PubsubSubscription(
            pubsub_name=PUBSUB_NAME, topic=s.topic, metadata=s.metadata, dead_letter_topic=s.dead_letter,
            type=metadata_pb2.PubsubSubscriptionType.STREAMING) for s in self.streams.of(caller.name)]
        return metadata_pb2.GetMetadataResponse(
            id=caller.name, runtime_version=f"mezzo-{mezzo.__version__}",
            registered_components=[metadata_pb2.RegisteredComponents(
                name=PUBSUB_NAME, type="pubsub.mezzo", version="v1", capabilities=list(FEATURES))],
            extended_metadata={"mezzo.version": mezzo.__version__, "mezzo.broker": self.service.broker.engine},
            subscriptions=subscriptions)

    # around every call -------------------------------------------------------------------------

    async def _unary(self, method: str, request: Any, context: grpc.aio.ServicerContext, fn: Any) -> Any:
        code = "OK"
        try:
            caller = self._authenticate(context)
            headers = metadata_of(context)
            with self._span(method, headers):
                return await fn(request, caller, headers)
        except DaprError as exc:
            code = exc.grpc
            await _abort(context, exc)
        except asyncio.CancelledError:  # the client gave up on the call
            code = "CANCELLED"
            raise
        except Exception:  # a bug, not bad input: say so without details (they are in the log)
            code = "INTERNAL"
            log.exception("Dapr gRPC call failed", method=method)
            await context.abort(grpc.StatusCode.INTERNAL, "the server failed; the error is in its log")
        finally:
            self.calls.labels(method, code).inc()

    def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller, from ``dapr-api-token`` (or ``authorization: Bearer``) metadata, as on the API port."""
        token = token_in(metadata_of(context))
        if token is None:
            self.auth_failures.labels("missing").inc()
            raise unauthenticated("missing API token: send a Mezzo token in the dapr-api-token metadata "
                                  "(DaprClient: set DAPR_API_TOKEN)")
        found = self.node.service(TokenService).authenticate(token)
        if found is None:
            self.auth_failures.labels("invalid").inc()
            raise unauthenticated("invalid, expired or revoked token")
        return found  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def _span(self, method: str, headers: dict[str, str]) -> Iterator[None]:
        """A server span per call when Mezzo traces itself, child of the caller's ``traceparent``:
        the messages published carry it (``headers_trace_context``)."""
        if self.tracer is None:
            yield
            return
        with self.tracer.start_as_current_span(
                f"{SERVICE}/{method}", context=extract_context(headers), kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}) as span:
            try:
                yield
            except DaprError as exc:
                span.set_status(trace.StatusCode.ERROR, exc.message[:200])
                span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[exc.grpc].value[0])
                raise


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata (binary ``-bin`` entries left out), keys lowercase as gRPC sends them."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


async def _abort(context: grpc.aio.ServicerContext, exc: DaprError) -> None:
    """End the call with Dapr's code, message and (as Dapr) an ``ErrorInfo`` naming the reason."""
    code = grpc.StatusCode[exc.grpc]
    trailers: tuple[tuple[str, bytes], ...] = ()
    if exc.reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN))
        status = status_pb2.Status(code=code.value[0], message=exc.message, details=[detail])
        trailers = (("grpc-status-details-bin", status.SerializeToString()),)
    await context.abort(code, exc.message, trailing_metadata=trailers)


def _unimplemented(method: str) -> Any:
    async def call(self: DaprApi, request: Any, context: grpc.aio.ServicerContext) -> None:
        try:  # the token first, as Dapr checks it on every method
            self._authenticate(context)
        except DaprError as exc:
            self.calls.labels(method, exc.grpc).inc()
            await _abort(context, exc)
        self.calls.labels(method, "UNIMPLEMENTED").inc()
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"Mezzo serves Dapr's pub/sub API only ({', '.join(SERVED)}), not {method}")

    return call


for _name in dir(dapr_pb2_grpc.DaprServicer):  # the rest of Dapr's service: UNIMPLEMENTED, naming what is served
    if _name[:1].isupper() and _name not in SERVED:
        setattr(DaprApi, _name, _unimplemented(_name))


class DaprGrpcListener(GrpcListener):
    """Dapr's gRPC port (default 50001, Dapr's)."""

    name = "dapr-grpc"

    def __init__(self, node: Any, service: MessagingService, host: str, port: int, drain_timeout: float) -> None:
        super().__init__(host, port, drain_timeout, MAX_MESSAGE)
        self.api = DaprApi(node, service)
        dapr_pb2_grpc.add_DaprServicer_to_server(self.api, self.server)

    async def quiesce(self, timeout: float) -> None:
        """Streaming subscriptions end first (the node is stopping: UNAVAILABLE, so SDKs subscribe
        again to the next node); other calls in flight finish up to the drain timeout."""
        await self.api.streams.closed(timeout)
