"""Mezzo traces itself: gateway -> app -> publish -> push to a subscriber is one trace in /api/traces/{id}.

A node with ``MEZZO_TRACING=otlp`` exports its own spans (gateway and API) to its own collector.
The request enters the gateway (a Route with the opentelemetry plugin), which proxies to a small
ASGI app instrumented with the OpenTelemetry SDK (service ``shop``). The app publishes an order
with Mezzo's SDK inside its span; the node's messaging pushes the message to the subscriber's
endpoint (service ``billing``) in a span of its own, the child of the publisher's. Every span lands in the same
trace, each the child of the one before.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mezzo import Mezzo
from mezzo.gateway.runtime import Gateway
from mezzo.telemetry.tracing import Tracing
from mezzo.testing.fixtures import RunningNode, free_port, start_node, wait_for

W3C = TraceContextTextMapPropagator()


class ShopAndBilling:
    """Two services in one small ASGI app: ``POST /orders`` (shop) publishes, ``POST /events`` (billing)
    takes pushed CloudEvents. Each has its own tracer provider exporting to the node's OTLP port, as
    separate processes would (BatchSpanProcessor: exports run in a thread, never on the event loop)."""

    def __init__(self, otlp: str, node: RunningNode) -> None:
        self.providers = {name: TracerProvider(resource=Resource.create({"service.name": name}),
                                               shutdown_on_exit=False) for name in ("shop", "billing")}
        for provider in self.providers.values():
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp + "/v1/traces")))
        self.node = node
        self.consumed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def orders(self, request: Request) -> JSONResponse:
        tracer = self.providers["shop"].get_tracer("shop")
        with tracer.start_as_current_span("POST /orders", context=W3C.extract(dict(request.headers)),
                                          kind=SpanKind.SERVER) as span:
            async with Mezzo(self.node.url, self.node.token) as client:  # the SDK carries the current span
                await client.messaging.publish("orders", {"order": 7})
            return JSONResponse({"traceId": format(span.get_span_context().trace_id, "032x")})

    async def events(self, request: Request) -> JSONResponse:
        tracer = self.providers["billing"].get_tracer("billing")
        event = await request.json()
        with tracer.start_as_current_span("process orders", context=W3C.extract(dict(request.headers)),
                                          kind=SpanKind.CONSUMER) as span:
            await self.consumed.put({"event": event, "traceId": format(span.get_span_context().trace_id, "032x")})
        return JSONResponse({})

    async def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/orders", self.orders, methods=["POST"]),
                                Route("/events", self.events, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        await wait_for(lambda: self.server is not None and self.server.started)

    async def flush(self) -> None:
        for provider in self.providers.values():
            await asyncio.to_thread(provider.force_flush)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 5)
        for provider in self.providers.values():
            await asyncio.to_thread(provider.shutdown)


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A node tracing itself into its own collector (the OTLP port must be known before it starts)."""
    running = await start_node(tmp_path / "data", tracing="otlp", otlp_port=free_port())
    try:
        yield running
    finally:
        await running.node.stop()


async def apply(node: RunningNode, docs: list[dict[str, Any]]) -> None:
    async with node.client() as client:
        results = await client.resources.apply([{"apiVersion": "mezzo.dev/v1", **d} for d in docs])
    runtime = node.node.service(Gateway)
    await wait_for(lambda: runtime.covers({f"{r.kind}/{r.namespace}/{r.name}": r.revision for r in results}))


async def test_one_trace_through_gateway_app_publish_and_push(traced: RunningNode) -> None:
    app = ShopAndBilling(traced.node.url("otlp"), traced)
    await app.start()
    try:
        await apply(traced, [
            {"kind": "Upstream", "metadata": {"name": "shop"}, "spec": {"nodes": [{"host": "127.0.0.1",
                                                                                  "port": app.port}]}},
            {"kind": "Route", "metadata": {"name": "orders"},
             "spec": {"paths": ["/orders"], "upstream": "shop", "plugins": {"opentelemetry": {}}}},
            {"kind": "Topic", "metadata": {"name": "orders"}, "spec": {}},
            {"kind": "Subscription", "metadata": {"name": "billing"},
             "spec": {"topic": "orders", "group": "billing", "endpoint": f"http://127.0.0.1:{app.port}/events"}},
        ])
        async with httpx.AsyncClient(base_url=traced.node.url("gateway"), timeout=30) as http:
            r = await http.post("/orders", json={})  # no traceparent: the gateway starts the trace
        assert r.status_code == 200, r.text
        trace_id = r.json()["traceId"]
        consumed = await asyncio.wait_for(app.consumed.get(), 30)
        assert consumed["event"]["data"] == {"order": 7}
        assert consumed["traceId"] == trace_id  # the push carried the trace to the subscriber

        await app.flush()
        await asyncio.to_thread(traced.node.service(Tracing).force_flush)
        headers = {"Authorization": f"Bearer {traced.token}"}
        async with httpx.AsyncClient(base_url=traced.url, headers=headers) as http:
            async def whole_trace() -> dict[str, Any] | None:
                r = await http.get(f"/api/traces/{trace_id}")
                if r.status_code != 200:
                    return None
                found = r.json()["data"][0]
                services = {found["processes"][s["processID"]]["serviceName"] for s in found["spans"]}
                return found if {"mezzo", "shop", "billing"} <= services and len(found["spans"]) >= 5 else None

            trace = await wait_for(whole_trace, timeout=20)
    finally:
        await app.stop()

    spans = {s["spanID"]: s for s in trace["spans"]}
    service = {sid: trace["processes"][s["processID"]]["serviceName"] for sid, s in spans.items()}

    def tag(span: dict[str, Any], key: str) -> Any:
        return next((t["value"] for t in span["tags"] if t["key"] == key), None)

    def parent(span: dict[str, Any]) -> dict[str, Any] | None:
        refs = [ref for ref in span["references"] if ref["refType"] == "CHILD_OF"]
        return spans.get(refs[0]["spanID"]) if refs else None

    consumer = next(s for s in spans.values() if s["operationName"] == "process orders")
    deliver = parent(consumer)
    assert deliver is not None and service[deliver["spanID"]] == "mezzo"  # the push of the message
    assert deliver["operationName"] == "deliver orders" and tag(deliver, "span.kind") == "producer"
    assert tag(deliver, "messaging.consumer.group.name") == "billing"
    assert tag(deliver, "mezzo.push.outcome") == "ack"
    publish = parent(deliver)
    assert publish is not None and service[publish["spanID"]] == "mezzo"  # the broker's publish span
    assert tag(publish, "span.kind") == "server" and ":publish" in tag(publish, "http.route")
    app_span = parent(publish)
    assert app_span is not None and service[app_span["spanID"]] == "shop"
    assert app_span["operationName"] == "POST /orders"
    gateway = parent(app_span)
    assert gateway is not None and service[gateway["spanID"]] == "mezzo"
    assert tag(gateway, "mezzo.gateway.route") == "default/orders" and parent(gateway) is None  # the root
    assert all(s["traceID"] == trace_id for s in trace["spans"])


async def test_the_last_spans_before_a_stop_reach_the_nodes_own_collector(tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = await start_node(data, tracing="otlp", otlp_port=free_port())
    try:
        async with httpx.AsyncClient(base_url=running.url) as http:
            r = await http.get("/v1/audit", headers={"Authorization": f"Bearer {running.token}"})
            assert r.status_code == 200, r.text
    finally:
        await running.node.stop()  # the request's span is still in the exporter's queue here
    again = await start_node(data)
    try:
        async with httpx.AsyncClient(base_url=again.url, headers={"Authorization": f"Bearer {again.token}"}) as http:
            r = await http.get("/api/traces", params={"service": "mezzo", "limit": 50})
        assert r.status_code == 200, r.text
        names = {s["operationName"] for t in r.json()["data"] for s in t["spans"]}
        assert any("/v1/audit" in name for name in names), names
    finally:
        await again.node.stop()
