"""Ingest: decode OTLP (protobuf or JSON, optionally gzip) and Zipkin v2 bodies, then store them.

Answers follow the OTLP/HTTP spec: 200 with an (empty) ExportTraceServiceResponse in the request's
encoding; 400 with a reason for malformed input; 413 over the size limit; 429 with Retry-After
when the store's writer is behind and 503 with Retry-After when its commit failed (exporters retry
both; nothing is dropped silently); 415 for a content type that is neither protobuf nor JSON.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson

from mezzo.tracing.model import Span, SpanError, from_otlp_json, from_otlp_proto, from_zipkin
from mezzo.tracing.store import Busy, StoreFailed, TraceStore

MAX_BODY = 16 * 1024 * 1024  # after decompression
PROTOBUF = "application/x-protobuf"
GRPC_CODES = {400: 3, 503: 14}  # INVALID_ARGUMENT, UNAVAILABLE; the rest RESOURCE_EXHAUSTED (8)


class IngestError(Exception):
    def __init__(self, status: int, detail: str, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.retry_after = status, detail, field, retry_after

    def body(self, content_type: str) -> tuple[bytes, str]:
        if content_type == PROTOBUF:
            from google.rpc import status_pb2  # type: ignore[import-untyped]

            return status_pb2.Status(code=GRPC_CODES.get(self.status, 8), message=self.detail).SerializeToString(), PROTOBUF
        problem = {"type": "about:blank", "title": {400: "Bad Request", 413: "Payload Too Large",
                                                    415: "Unsupported Media Type", 429: "Too Many Requests",
                                                    503: "Service Unavailable"}.get(self.status, "Error"),
                   "status": self.status, "detail": self.detail}
        if self.field:
            problem["errors"] = [{"field": self.field, "reason": self.detail}]
        return orjson.dumps(problem), "application/problem+json"


def decompress(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").lower().strip()
    if encoding in ("", "identity"):
        data = body
    elif encoding == "gzip":
        try:
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = decoder.decompress(body, MAX_BODY + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise IngestError(400, f"body is not valid gzip: {exc}", "body") from None
    elif encoding == "deflate":
        try:
            data = zlib.decompressobj().decompress(body, MAX_BODY + 1)
        except zlib.error as exc:
            raise IngestError(400, f"body is not valid deflate: {exc}", "body") from None
    else:
        raise IngestError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    if len(data) > MAX_BODY:
        raise IngestError(413, f"a request carries at most {MAX_BODY} bytes of spans")
    return data


class Collector:
    def __init__(self, store: TraceStore, metrics: Any = None) -> None:
        self.store = store
        self.received = self.rejected = None
        self.red = None
        self.tail: Any = None  # a TailSampler while a TailSamplingPolicy exists
        self.metrics = metrics
        if metrics is not None:
            from mezzo.tracing.analytics import RedMetrics

            self.red = RedMetrics(metrics)
            self.received = metrics.counter("tracing", "spans_received", "total", "Spans accepted.", labels=("protocol",))
            self.rejected = metrics.counter("tracing", "spans_rejected", "total", "Requests refused.",
                                            labels=("protocol", "reason"))

    async def otlp(self, body: bytes, content_type: str | None, encoding: str | None) -> tuple[bytes, str]:
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype not in (PROTOBUF, "application/json"):
            raise self._refuse("otlp", IngestError(415, "send application/x-protobuf or application/json"))
        try:
            data = decompress(body, encoding)
            spans = from_otlp_proto(data) if ctype == PROTOBUF else from_otlp_json(data)
        except SpanError as exc:
            raise self._refuse("otlp", IngestError(400, str(exc), exc.field)) from None
        except IngestError as exc:
            raise self._refuse("otlp", exc) from None
        await self._store("otlp", spans)
        if ctype == PROTOBUF:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceResponse,
            )

            return ExportTraceServiceResponse().SerializeToString(), PROTOBUF
        return b"{}", "application/json"

    async def zipkin(self, body: bytes, content_type: str | None, encoding: str | None) -> None:
        ctype = (content_type or "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise self._refuse("zipkin", IngestError(415, "Zipkin v2 spans are application/json (protobuf: not supported)"))
        try:
            spans = from_zipkin(decompress(body, encoding))
        except SpanError as exc:
            raise self._refuse("zipkin", IngestError(400, str(exc), exc.field)) from None
        except IngestError as exc:
            raise self._refuse("zipkin", exc) from None
        await self._store("zipkin", spans)

    async def _store(self, protocol: str, spans: list[Span]) -> None:
        try:
            if self.tail is not None:
                await self.tail.offer(spans)
            else:
                await self.store.write(spans)
        except Busy as exc:
            raise self._refuse(protocol, IngestError(429, str(exc), retry_after=1)) from None
        except StoreFailed as exc:  # retryable for exporters, as OTLP/HTTP says of 503
            raise self._refuse(protocol, IngestError(503, str(exc), retry_after=5)) from None
        if self.received is not None:
            self.received.labels(protocol).inc(len(spans))
        if self.red is not None:
            self.red.observe(spans)

    def _refuse(self, protocol: str, exc: IngestError) -> IngestError:
        if self.rejected is not None:
            self.rejected.labels(protocol, str(exc.status)).inc()
        return exc
