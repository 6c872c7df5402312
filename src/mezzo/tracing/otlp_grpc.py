"""OTLP/gRPC trace ingest (``opentelemetry.proto.collector.trace.v1.TraceService/Export``), default port 4317,
for the OpenTelemetry SDKs and agents whose exporter speaks gRPC (Python's ``opentelemetry-exporter-otlp``,
Go's ``otlptracegrpc``, the .NET and Java SDKs, the Collector's ``otlp`` exporter).

The request is handed over as the bytes gRPC received (decompressed by gRPC when the exporter sends
gzip, at most 16 MiB, RESOURCE_EXHAUSTED above) and read by the same code as OTLP/HTTP's protobuf body,
so a span is stored the same whichever way it came. No token, as on the OTLP/HTTP port: the port
listens on ``MEZZO_HOST``. Errors follow the OTLP specification: INVALID_ARGUMENT for a request that
is not valid (not retried by exporters), UNAVAILABLE with a ``RetryInfo`` when the store is busy or
failing (retried after the delay it names). Needs grpcio (``pip install 'mezzo[grpc]'``); imported only
when the node serves the port.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from mezzo.node.grpc_listener import GrpcListener
from mezzo.tracing.collector import MAX_BODY, Collector, IngestError

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EMPTY_RESPONSE = b""  # an ExportTraceServiceResponse with no partial_success: every span was accepted
PROTOCOL = "otlp_grpc"  # the protocol label of mezzo_tracing_spans_received / _rejected


class OtlpGrpcListener(GrpcListener):
    name = "otlp-grpc"

    def __init__(self, collector: Collector, host: str, port: int, drain_timeout: float) -> None:
        super().__init__(host, port, drain_timeout, MAX_BODY)
        self.collector = collector
        export = grpc.unary_unary_rpc_method_handler(self.export)  # no (de)serializer: bytes in, bytes out
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": export}),))

    async def export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await self.collector.otlp_proto(request, PROTOCOL)
        except IngestError as exc:
            await _abort(context, exc)
        return EMPTY_RESPONSE


async def _abort(context: grpc.aio.ServicerContext, exc: IngestError) -> Any:
    """End the call with OTLP's code for ``exc``: INVALID_ARGUMENT (a ``BadRequest`` naming the field),
    else UNAVAILABLE with a ``RetryInfo`` (the store is busy or failing: retry after that long). The
    RetryInfo is in the status details (where Go's exporter reads it) and, on its own, in the
    ``google.rpc.retryinfo-bin`` trailer (the only place Python's exporter reads it)."""
    detail = any_pb2.Any()
    retry_trailer: tuple[tuple[str, bytes], ...] = ()
    if exc.status not in (429, 503):  # the request itself is wrong: retrying it cannot help
        code = grpc.StatusCode.INVALID_ARGUMENT
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field or "body", description=exc.detail)]))
    else:
        code = grpc.StatusCode.UNAVAILABLE
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=exc.retry_after or 1))
        detail.Pack(retry)
        retry_trailer = (("google.rpc.retryinfo-bin", retry.SerializeToString()),)
    status = status_pb2.Status(code=code.value[0], message=exc.detail, details=[detail])
    await context.abort(code, exc.detail,
                        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()), *retry_trailer))
