"""OTLP/gRPC ingest: the standard gRPC exporter works unchanged; errors are OTLP's gRPC codes with details."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from mezzo.node.server import bind
from mezzo.testing.fixtures import RunningNode, free_port, start_node
from mezzo.tracing.store import StoreFailed, TraceStore

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
async def tr(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data")
    try:
        yield running
    finally:
        await running.node.stop()


def target(running: RunningNode) -> str:
    return running.node.url("otlp-grpc").removeprefix("grpc://")


async def export(running: RunningNode, body: bytes) -> bytes:
    async with grpc.aio.insecure_channel(target(running)) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        return await call(body, timeout=10)  # type: ignore[no-any-return]


def request_with(**span: Any) -> bytes:
    fields = {"trace_id": bytes.fromhex("5b8efff798038103d269b633813fc60c"), "span_id": bytes.fromhex("eee19b7ec3c1b174"),
              "name": "GET /", "start_time_unix_nano": 1_700_000_000_000_000_000,
              "end_time_unix_nano": 1_700_000_000_002_000_000, **span}
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(**fields)])])]) \
        .SerializeToString()


def details(exc: grpc.aio.AioRpcError) -> list[Any]:
    trailer = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(trailer)
    assert status.code == exc.code().value[0] and status.message == exc.details()
    return list(status.details)


async def test_the_sdk_grpc_exporter_works_unchanged_with_gzip(tr: RunningNode) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "billing"}))
    exporter = OTLPSpanExporter(endpoint=f"http://{target(tr)}", insecure=True, compression=Compression.Gzip)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    def work() -> str:
        with tracer.start_as_current_span("invoice", attributes={"invoice.lines": 3}) as root:
            with tracer.start_as_current_span("render pdf"):
                pass
            return format(root.get_span_context().trace_id, "032x")

    trace_id = await asyncio.to_thread(work)
    await asyncio.to_thread(provider.shutdown)
    async with httpx.AsyncClient(base_url=tr.url, headers={"Authorization": f"Bearer {tr.token}"}) as http:
        [trace] = (await http.get(f"/api/traces/{trace_id}")).json()["data"]
        assert sorted(s["operationName"] for s in trace["spans"]) == ["invoice", "render pdf"]
        root = next(s for s in trace["spans"] if s["operationName"] == "invoice")
        assert {"key": "invoice.lines", "type": "int64", "value": 3} in root["tags"]
        assert trace["processes"][root["processID"]]["serviceName"] == "billing"
        metrics = (await http.get("/metrics")).text
    assert 'mezzo_tracing_spans_received_total{protocol="otlp_grpc"} 2.0' in metrics


async def test_a_bad_request_is_invalid_argument_naming_the_field(tr: RunningNode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await export(tr, request_with(trace_id=bytes(16)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [detail] = details(info.value)
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    assert bad.field_violations[0].field == "traceId" and "16 bytes" in bad.field_violations[0].description
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await export(tr, b"\xff\xff\xff not protobuf")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an OTLP ExportTraceServiceRequest" in (info.value.details() or "")
    # nothing of a refused request is stored; a good one after it is
    store = tr.node.service(TraceStore)
    assert await store.services() == []
    assert await export(tr, request_with()) == b""
    assert await store.services() == ["unknown_service"]


async def test_a_failing_store_is_unavailable_with_retry_info(tr: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tr.node.service(TraceStore)

    async def failing(spans: list[Any]) -> None:
        raise StoreFailed("the trace store cannot write: disk full")

    monkeypatch.setattr(store, "write", failing)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await export(tr, request_with())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # OTLP exporters retry it
    assert "disk full" in (info.value.details() or "")
    [detail] = details(info.value)
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry) and retry.retry_delay.seconds == 5


async def test_the_port_can_be_turned_off_and_a_taken_one_stops_the_start(tmp_path: Path) -> None:
    off = await start_node(tmp_path / "off", otlp_grpc_port=None)
    try:
        assert "otlp-grpc" not in {listener.name for listener in off.node.listeners}
    finally:
        await off.node.stop()
    port = free_port()
    held = bind("127.0.0.1", port)
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_node(tmp_path / "taken", otlp_grpc_port=port)
    finally:
        held.close()
    running = await start_node(tmp_path / "taken", otlp_grpc_port=port)  # its store was closed: it opens again
    try:
        assert running.node.url("otlp-grpc") == f"grpc://127.0.0.1:{port}"
    finally:
        await running.node.stop()
