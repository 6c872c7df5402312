"""Ingest: decode OTLP (protobuf or JSON, optionally gzip) and Zipkin v2 bodies, then store them.

Answers follow the OTLP/HTTP spec: 200 with an (empty) ExportTraceServiceResponse in the request's
encoding; 400 with a reason for malformed input; 413 over the size limit; 429 with Retry-After
when the store's writer is behind and 503 with Retry-After when its commit failed (exporters retry
both; nothing is dropped silently); 415 for a content type that is neither protobuf nor JSON.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
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


def _inflate(body: bytes, wbits: int, name: str, members: bool) -> bytes:
    """The whole of a gzip (``members``: RFC 1952 allows several, read as one) or zlib stream, at most
    MAX_BODY bytes of it; a stream cut short or followed by other bytes is not valid."""
    out = bytearray()
    data = body
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            while data:
                out += decoder.decompress(data, MAX_BODY + 1 - len(out))
                if len(out) > MAX_BODY:
                    raise IngestError(413, f"a request carries at most {MAX_BODY} bytes of spans")
                data = decoder.unconsumed_tail
        except zlib.error as exc:
            raise IngestError(400, f"body is not valid {name}: {exc}", "body") from None
        if not decoder.eof:
            raise IngestError(400, f"body is not valid {name}: it ends before the end of its data", "body")
        data = decoder.unused_data
        if not data:
            return bytes(out)
        if not members or data[:2] != b"\x1f\x8b":
            raise IngestError(400, f"body is not valid {name}: {len(data)} bytes follow its data", "body")


def decompress(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").lower().strip()
    if encoding in ("", "identity"):
        data = body
    elif encoding == "gzip":
        data = _inflate(body, 16 + zlib.MAX_WBITS, "gzip", members=True)
    elif encoding == "deflate":  # HTTP's deflate is the zlib format (RFC 9110 8.4.1.2)
        data = _inflate(body, zlib.MAX_WBITS, "deflate", members=False)
    else:
        raise IngestError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    if len(data) > MAX_BODY:
        raise IngestError(413, f"a request carries at most {MAX_BODY} bytes of spans")
    return data


async def read_body(stream: AsyncIterator[bytes], content_length: str | None) -> bytes:
    """A request's body, refused (413) as soon as it is known to exceed MAX_BODY: from its
    Content-Length before any of it is read, else once that much has arrived. The limit applies to
    the bytes sent too, so a client cannot make the node buffer more than it would take."""
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > MAX_BODY:
        raise IngestError(413, f"a request carries at most {MAX_BODY} bytes of spans")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > MAX_BODY:
            raise IngestError(413, f"a request carries at most {MAX_BODY} bytes of spans")
        chunks.append(chunk)
    return b"".join(chunks)


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
            raise self.refuse("otlp", IngestError(415, "send application/x-protobuf or application/json"))
        try:
            data = decompress(body, encoding)
            spans = from_otlp_proto(data) if ctype == PROTOBUF else from_otlp_json(data)
        except SpanError as exc:
            raise self.refuse("otlp", IngestError(400, str(exc), exc.field)) from None
        except IngestError as exc:
            raise self.refuse("otlp", exc) from None
        await self._store("otlp", spans)
        if ctype == PROTOBUF:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceResponse,
            )

            return ExportTraceServiceResponse().SerializeToString(), PROTOBUF
        return b"{}", "application/json"

    async def otlp_proto(self, data: bytes, protocol: str) -> None:
        """An ExportTraceServiceRequest as OTLP/gRPC delivers it: already decompressed and size-checked."""
        try:
            spans = from_otlp_proto(data)
        except SpanError as exc:
            raise self.refuse(protocol, IngestError(400, str(exc), exc.field)) from None
        await self._store(protocol, spans)

    async def zipkin(self, body: bytes, content_type: str | None, encoding: str | None) -> None:
        ctype = (content_type or "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise self.refuse("zipkin", IngestError(415, "Zipkin v2 spans are application/json (protobuf: not supported)"))
        try:
            spans = from_zipkin(decompress(body, encoding))
        except SpanError as exc:
            raise self.refuse("zipkin", IngestError(400, str(exc), exc.field)) from None
        except IngestError as exc:
            raise self.refuse("zipkin", exc) from None
        await self._store("zipkin", spans)

    async def _store(self, protocol: str, spans: list[Span]) -> None:
        try:
            if self.tail is not None:
                await self.tail.offer(spans)
            else:
                await self.store.write(spans)
        except Busy as exc:
            raise self.refuse(protocol, IngestError(429, str(exc), retry_after=1)) from None
        except StoreFailed as exc:  # retryable for exporters, as OTLP/HTTP says of 503
            raise self.refuse(protocol, IngestError(503, str(exc), retry_after=5)) from None
        if self.received is not None:
            self.received.labels(protocol).inc(len(spans))
        if self.red is not None:
            self.red.observe(spans)

    def refuse(self, protocol: str, exc: IngestError) -> IngestError:
        if self.rejected is not None:
            self.rejected.labels(protocol, str(exc.status)).inc()
        return exc
