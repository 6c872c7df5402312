"""The SDK sends the caller's current span as traceparent, so Mezzo's spans join the caller's trace."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace import TracerProvider

from mezzo import Mezzo
from mezzo.sdk.client import with_trace_context


async def test_requests_carry_the_current_span() -> None:
    seen: list[httpx.Headers] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"ok": True})

    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    async with Mezzo("http://mezzo.test", "tok", transport=httpx.MockTransport(answer)) as client:
        await client.request("GET", "/healthz")
        with tracer.start_as_current_span("work") as span:
            await client.request("POST", "/v1/topics/orders:publish", json={"data": 1})
    assert "traceparent" not in seen[0]  # no span, nothing invented
    context = span.get_span_context()
    assert seen[1]["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert seen[1]["content-type"] == "application/json"


def test_headers_the_caller_set_win() -> None:
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    assert with_trace_context(None) is None
    with tracer.start_as_current_span("work"):
        own = {"TraceParent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        assert with_trace_context(own) == own
        assert set(with_trace_context({"x-a": "1"}) or {}) == {"traceparent", "x-a"}
