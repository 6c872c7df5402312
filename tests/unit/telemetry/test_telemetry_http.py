"""TelemetryMiddleware on small Starlette and FastAPI apps."""

import asyncio

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mezzo.telemetry import Metrics, TelemetryMiddleware, Tracing

TRACE = "463ac35c9f6413ad48485a3953bb6124"
SPAN = "a2fb4a1d1a96d312"


async def resource(request: Request) -> Response:
    span_context = trace.get_current_span().get_span_context()
    return JSONResponse(
        {"kind": request.path_params["kind"], "trace_id": f"{span_context.trace_id:032x}"}
    )


async def item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item_id"])


async def unavailable(request: Request) -> Response:
    return PlainTextResponse("down", status_code=503)


async def boom(request: Request) -> Response:
    raise RuntimeError("kaput")


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/resources/{kind}", resource),
            Route("/unavailable", unavailable),
            Route("/boom", boom),
            Route("/healthz", unavailable),
            Mount("/v2", routes=[Route("/items/{item_id}", item)]),
        ]
    )


def client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def requests_total(metrics: Metrics, route: str, status: str, method: str = "GET") -> float | None:
    labels = {"method": method, "route": route, "status": status}
    return metrics.registry.get_sample_value("mezzo_api_requests_total", labels)


async def test_records_route_template_and_status(metrics: Metrics) -> None:
    app = TelemetryMiddleware(starlette_app(), metrics, None)
    async with client(app) as http:
        assert (await http.get("/v1/resources/widgets")).status_code == 200
        await http.get("/v1/resources/gadgets")
        await http.get("/unavailable")

    assert requests_total(metrics, "/v1/resources/{kind}", "200") == 2.0
    assert requests_total(metrics, "/unavailable", "503") == 1.0
    duration = metrics.registry.get_sample_value(
        "mezzo_api_request_duration_seconds_count",
        {"method": "GET", "route": "/v1/resources/{kind}"},
    )
    assert duration == 2.0
    body, _ = metrics.render()
    assert b"widgets" not in body


@pytest.mark.parametrize(
    ("path", "route", "status"),
    [
        ("/v2/items/7", "/v2/items/{item_id}", "200"),
        ("/nowhere", "unmatched", "404"),
        ("/v2/nowhere", "unmatched", "404"),
    ],
)
async def test_mounts_and_misses(metrics: Metrics, path: str, route: str, status: str) -> None:
    async with client(TelemetryMiddleware(starlette_app(), metrics, None)) as http:
        await http.get(path)

    assert requests_total(metrics, route, status) == 1.0


async def test_fastapi_include_router_prefix_is_part_of_the_route(metrics: Metrics) -> None:
    router = APIRouter(prefix="/resources")

    @router.get("/{kind}")
    async def get_kind(kind: str) -> dict[str, str]:
        return {"kind": kind}

    api = FastAPI()
    api.include_router(router, prefix="/v1")
    outer = Starlette(routes=[Mount("/api", app=api)])
    async with client(TelemetryMiddleware(api, metrics, None)) as http:
        await http.get("/v1/resources/widgets")
    async with client(TelemetryMiddleware(outer, metrics, None)) as http:
        await http.get("/api/v1/resources/widgets")

    assert requests_total(metrics, "/v1/resources/{kind}", "200") == 1.0
    assert requests_total(metrics, "/api/v1/resources/{kind}", "200") == 1.0


async def test_server_span_continues_incoming_traceparent(
    metrics: Metrics, tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    async with client(TelemetryMiddleware(starlette_app(), metrics, tracing)) as http:
        response = await http.get(
            "/v1/resources/widgets", headers={"traceparent": f"00-{TRACE}-{SPAN}-01"}
        )

    assert response.json()["trace_id"] == TRACE  # the span was current inside the app
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /v1/resources/{kind}"
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == SPAN
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/resources/{kind}"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.path"] == "/v1/resources/widgets"
    assert span.status.status_code is StatusCode.UNSET


async def test_server_span_continues_incoming_b3(
    metrics: Metrics, tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    headers = {"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN, "X-B3-Sampled": "1"}
    async with client(TelemetryMiddleware(starlette_app(), metrics, tracing)) as http:
        await http.get("/v1/resources/widgets", headers=headers)

    (span,) = spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE


async def test_5xx_and_exceptions_mark_the_span_as_error(
    metrics: Metrics, tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    async with client(TelemetryMiddleware(starlette_app(), metrics, tracing)) as http:
        assert (await http.get("/unavailable")).status_code == 503
        assert (await http.get("/boom")).status_code == 500

    unavailable_span, boom_span = spans.get_finished_spans()
    assert unavailable_span.status.status_code is StatusCode.ERROR
    assert boom_span.status.status_code is StatusCode.ERROR
    assert boom_span.attributes is not None
    assert boom_span.attributes["error.type"] == "RuntimeError"
    assert [event.name for event in boom_span.events] == ["exception"]
    assert requests_total(metrics, "/boom", "500") == 1.0


async def test_unmatched_request_span_is_named_by_method(
    metrics: Metrics, tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    async with client(TelemetryMiddleware(starlette_app(), metrics, tracing)) as http:
        await http.get("/nowhere")

    (span,) = spans.get_finished_spans()
    assert span.name == "GET"
    assert span.attributes is not None and "http.route" not in span.attributes


async def test_excluded_paths_are_not_observed(
    metrics: Metrics, tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    app = TelemetryMiddleware(starlette_app(), metrics, tracing, exclude_paths={"/healthz"})
    async with client(app) as http:
        await http.get("/healthz")

    assert requests_total(metrics, "/healthz", "503") is None
    assert spans.get_finished_spans() == ()


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_websocket_and_lifespan_pass_through_untouched(
    metrics: Metrics, tracing: Tracing, spans: InMemorySpanExporter, scope_type: str
) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": scope_type, "path": "/ws", "headers": []}
    await TelemetryMiddleware(inner, metrics, tracing)(scope, receive, send)

    assert len(seen) == 1
    assert seen[0][0] is scope and seen[0][1] is receive and seen[0][2] is send
    assert spans.get_finished_spans() == ()
    body, _ = metrics.render()
    assert b"mezzo_api_requests_total{" not in body


async def test_response_body_is_streamed_not_buffered(metrics: Metrics) -> None:
    first_chunk_sent = asyncio.Event()
    sent: list[Message] = []

    async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        # Deadlocks (and times out) if the middleware held the first chunk back.
        await first_chunk_sent.wait()
        await send({"type": "http.response.body", "body": b"two"})

    async def server_send(message: Message) -> None:
        sent.append(message)
        if message.get("body") == b"one":
            first_chunk_sent.set()

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/stream", "headers": []}
    await asyncio.wait_for(
        TelemetryMiddleware(streaming_app, metrics)(scope, receive, server_send), 5
    )

    assert [m.get("body") for m in sent] == [None, b"one", b"two"]
    assert requests_total(metrics, "unmatched", "200") == 1.0


async def test_unknown_methods_share_one_label(metrics: Metrics) -> None:
    async with client(TelemetryMiddleware(starlette_app(), metrics, None)) as http:
        await http.request("BREW", "/v1/resources/coffee")

    assert requests_total(metrics, "/v1/resources/{kind}", "405", method="_OTHER") == 1.0


async def test_cancelled_request_is_not_counted_as_server_error(
    metrics: Metrics, tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    async def cancelled(scope: Scope, receive: Receive, send: Send) -> None:
        raise asyncio.CancelledError

    scope = {"type": "http", "method": "GET", "path": "/slow", "headers": []}
    with pytest.raises(asyncio.CancelledError):
        await TelemetryMiddleware(cancelled, metrics, tracing)(scope, None, None)  # type: ignore[arg-type]

    assert requests_total(metrics, "unmatched", "499") == 1.0
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
