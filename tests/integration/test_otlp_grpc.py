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
    # the same RetryInfo on its own trailer too: Python's exporter reads it only there (Go's in the details)
    trailer = dict(info.value.trailing_metadata() or ())["google.rpc.retryinfo-bin"]
    assert error_details_pb2.RetryInfo.FromString(trailer) == retry


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


async def test_the_size_limit_holds_after_gzip_and_nothing_of_a_refused_request_is_stored(tr: RunningNode) -> None:
    """OTLP/gRPC: the server MUST limit a request's size; gRPC answers RESOURCE_EXHAUSTED (not retryable
    without RetryInfo), and the limit counts the decompressed bytes, so a small gzip bomb is refused too."""
    big = request_with(name="x" * (17 * 1024 * 1024))  # over MAX_BODY (16 MiB) once decoded
    for compression in (None, grpc.Compression.Gzip):
        async with grpc.aio.insecure_channel(target(tr), compression=compression) as channel:
            call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(big, timeout=20)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, compression
    assert await tr.node.service(TraceStore).services() == []


async def test_an_empty_request_succeeds_and_other_signals_are_unimplemented(tr: RunningNode) -> None:
    assert await export(tr, b"") == b""  # OTLP: an empty request SHOULD be answered with success
    async with grpc.aio.insecure_channel(target(tr)) as channel:
        for service in ("metrics.v1.MetricsService", "logs.v1.LogsService"):
            call = channel.unary_unary(f"/opentelemetry.proto.collector.{service}/Export",
                                       request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, service  # not retried by exporters


async def test_the_sdk_retries_a_busy_store_and_its_spans_land(tr: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from mezzo.tracing.store import Busy

    store = tr.node.service(TraceStore)
    write, calls = store.write, []

    async def busy_once(spans: list[Any]) -> None:
        calls.append(len(spans))
        if len(calls) == 1:
            raise Busy("the writer is behind")
        await write(spans)

    monkeypatch.setattr(store, "write", busy_once)
    provider = TracerProvider(resource=Resource.create({"service.name": "retried"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://{target(tr)}", insecure=True)))

    def work() -> None:
        with provider.get_tracer("test").start_as_current_span("retried"):
            pass

    await asyncio.to_thread(work)
    await asyncio.to_thread(provider.shutdown)
    assert calls == [1, 1]  # refused once (UNAVAILABLE: retryable), then stored
    assert await store.services() == ["retried"]


async def test_a_call_in_flight_finishes_when_the_node_stops_and_later_ones_are_unavailable(
        tr: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tr.node.service(TraceStore)
    write, writing = store.write, asyncio.Event()

    async def slow(spans: list[Any]) -> None:
        writing.set()
        await asyncio.sleep(0.5)
        await write(spans)

    monkeypatch.setattr(store, "write", slow)
    address = target(tr)
    in_flight = asyncio.create_task(export(tr, request_with()))
    await writing.wait()
    stopping = asyncio.create_task(tr.node.stop())
    await asyncio.sleep(0.1)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request_with(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable: the exporter tries again
    assert await in_flight == b""  # drained, not cut
    await stopping
    assert store.written == 1


async def test_a_node_that_fails_to_start_after_tracing_leaves_no_grpc_port_bound(tmp_path: Path) -> None:
    """gRPC binds in the listener's __init__; a server never started would keep the port (and take
    connections it never answers) for the life of the process."""
    otlp, dapr = free_port(), free_port()
    held = bind("127.0.0.1", 0)  # the cache module, which starts after tracing and messaging, cannot listen
    try:
        with pytest.raises(OSError, match="cannot listen on"):
            await start_node(tmp_path / "data", otlp_grpc_port=otlp, dapr_grpc_port=dapr,
                             resp_port=held.getsockname()[1])
    finally:
        held.close()
    for port in (otlp, dapr):
        bind("127.0.0.1", port).close()  # free again
