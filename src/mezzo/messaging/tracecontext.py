"""The publisher's trace, carried by the messages it publishes over HTTP (``traceparent`` attributes)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request

from mezzo.messaging.service import PublishMessage
from mezzo.telemetry.propagation import extract_context, inject_attributes


def trace_context(request: Request) -> dict[str, str]:
    """What messages carry of the publisher's trace: this request's span when Mezzo traces itself, else its headers."""
    return headers_trace_context(request.headers)


def headers_trace_context(headers: Mapping[str, str]) -> dict[str, str]:
    """``trace_context`` for any carrier of headers (an HTTP request's, a gRPC call's metadata):
    the current span when Mezzo traces itself, else the caller's W3C headers, else its B3 ones."""
    current: dict[str, str] = {}
    inject_attributes(current)
    if not current and headers.get("traceparent"):
        current = {h: headers[h] for h in ("traceparent", "tracestate") if h in headers}
    elif not current:  # a B3 (Zipkin) caller: its context goes on as traceparent
        inject_attributes(current, extract_context(headers))
    return current


def carry_trace(request: Request, messages: list[PublishMessage]) -> None:
    """Messages continue the publisher's trace (``trace_context``) unless they set those attributes."""
    carry(trace_context(request), messages)


def carry(current: Mapping[str, str], messages: list[PublishMessage]) -> None:
    for message in messages:
        for name, value in current.items():
            message.attributes.setdefault(name, value)
