"""opentelemetry / tracing: continue W3C and B3 traces, a server span per request, traceparent upstream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mezzo.telemetry.tracing import Tracing
from mezzo.testing.fixtures import wait_for

from .conftest import EchoServer, GatewayHandle, route_doc, upstream_doc

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture
def spans(gateway: GatewayHandle) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing = Tracing("mezzo-test", span_processors=[SimpleSpanProcessor(exporter)])
    gateway.runtime.tracing = tracing  # type: ignore[attr-defined]  # what the gateway module wires in
    yield exporter
    tracing.shutdown()


async def test_continues_w3c_trace_and_injects_upstream(gateway: GatewayHandle, upstream: EchoServer,
                                                        spans: InMemorySpanExporter) -> None:
    await gateway.apply(upstream_doc("up", upstream),
                        route_doc("orders", ["/orders/*"], plugins={"opentelemetry": {
                            "additionalAttributes": ["http_x_tenant", "arg_page"],
                            "additionalHeaderPrefixAttributes": ["x-custom-"]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/orders/7", params={"page": "3"}, headers={
            "traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=1", "x-tenant": "t1", "x-custom-a": "b"})
    assert r.status_code == 200
    sent = r.json()["headers"]
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01") and span_id != PARENT
    assert sent["tracestate"] == "vendor=1"
    await wait_for(lambda: spans.get_finished_spans())
    (span,) = spans.get_finished_spans()
    assert span.kind == SpanKind.SERVER and span.name == "GET orders"
    assert f"{span.context.trace_id:032x}" == TRACE and f"{span.context.span_id:016x}" == span_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT and span.parent.is_remote
    attrs = span.attributes
    assert attrs["http.response.status_code"] == 200 and attrs["mezzo.gateway.route"] == "default/orders"
    assert attrs["mezzo.gateway.upstream"] == "default/up" and attrs["network.peer.port"] == upstream.port
    assert attrs["url.path"] == "/orders/7" and attrs["http.request.method"] == "GET"
    assert attrs["http_x_tenant"] == "t1" and attrs["arg_page"] == "3"
    assert attrs["http.request.header.x-custom-a"] == "b"


async def test_new_trace_b3_errors_and_alias(gateway: GatewayHandle, upstream: EchoServer,
                                             spans: InMemorySpanExporter) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"tracing": {}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.json()["headers"]["traceparent"].startswith("00-")
        b3 = await http.get("/x", headers={"b3": f"{TRACE}-{PARENT}-1"})
        sent = b3.json()["headers"]
        assert sent["traceparent"].split("-")[1] == TRACE
        assert sent["b3"].startswith(TRACE) and PARENT not in sent["b3"]  # B3 callers get B3 back, with our span
        multi = await http.get("/x", headers={"x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "1"})
        assert multi.json()["headers"]["traceparent"].split("-")[1] == TRACE
        assert "x-b3-spanid" not in multi.json()["headers"]
        failed = await http.get("/x", params={"status": "503"})
        assert failed.status_code == 503
    await wait_for(lambda: len(spans.get_finished_spans()) == 4)
    first, from_b3, from_multi, error = spans.get_finished_spans()
    assert first.parent is None
    assert f"{from_b3.context.trace_id:032x}" == TRACE and f"{from_multi.context.trace_id:032x}" == TRACE
    assert error.status.status_code == StatusCode.ERROR and error.attributes["http.response.status_code"] == 503


async def test_samplers(gateway: GatewayHandle, upstream: EchoServer, spans: InMemorySpanExporter) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("off", ["/off"], plugins={"opentelemetry": {"sampler": {"name": "always_off"}}}),
        route_doc("parent", ["/parent"], plugins={"opentelemetry": {"sampler": {"name": "parent_base"}}}),
        route_doc("none", ["/none"], plugins={"opentelemetry": {"sampler": {
            "name": "trace_id_ratio", "options": {"fraction": 0}}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        incoming = f"00-{TRACE}-{PARENT}-01"
        r = await http.get("/off", headers={"traceparent": incoming})
        assert r.json()["headers"]["traceparent"] == incoming  # passed on untouched
        r = await http.get("/parent", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
        assert r.json()["headers"]["traceparent"] == f"00-{TRACE}-{PARENT}-00"  # the caller did not sample
        assert "traceparent" not in (await http.get("/none")).json()["headers"]
        r = await http.get("/parent", headers={"traceparent": incoming})
        assert r.json()["headers"]["traceparent"] != incoming
    await wait_for(lambda: spans.get_finished_spans())
    assert len(spans.get_finished_spans()) == 1


async def test_without_a_tracer_provider_the_trace_still_continues(gateway: GatewayHandle,
                                                                   upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"opentelemetry": {}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    _, trace_id, span_id, _ = r.json()["headers"]["traceparent"].split("-")
    assert trace_id == TRACE and span_id != PARENT
