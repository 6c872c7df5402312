"""The publisher's trace, carried by the messages it publishes over HTTP (``traceparent`` attributes)."""

from __future__ import annotations

from starlette.requests import Request

from mezzo.messaging.service import PublishMessage
from mezzo.telemetry.propagation import extract_context, inject_attributes


def trace_context(request: Request) -> dict[str, str]:
    """What messages carry of the publisher's trace: this request's span when Mezzo traces itself, else its headers."""
    current: dict[str, str] = {}
    inject_attributes(current)
    if not current and request.headers.get("traceparent"):
        current = {h: request.headers[h] for h in ("traceparent", "tracestate") if h in request.headers}
    elif not current:  # a B3 (Zipkin) caller: its context goes on as traceparent
        inject_attributes(current, extract_context(request.headers))
    return current


def carry_trace(request: Request, messages: list[PublishMessage]) -> None:
    """Messages continue the publisher's trace (``trace_context``) unless they set those attributes."""
    current = trace_context(request)
    for message in messages:
        for name, value in current.items():
            message.attributes.setdefault(name, value)
