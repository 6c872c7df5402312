"""Trace context in and out of HTTP headers and message attributes (W3C and B3)."""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "extract_context",
    "extract_from_attributes",
    "inject_attributes",
    "inject_headers",
    "sampling_deferred",
]

_W3C = TraceContextTextMapPropagator()
_SAMPLING_DEFERRED = create_key("mezzo-b3-sampling-deferred")

# B3 spec (openzipkin/b3-propagation): ids are lower-hex; trace ids 64 or 128 bits.
_TRACE_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_SINGLE_SAMPLING = {"0": False, "1": True, "d": True}
# Before the spec, some tracers sent X-B3-Sampled as true/false: accept both.
_MULTI_SAMPLING = {"0": False, "1": True, "false": False, "true": True}


class _Remote(NamedTuple):
    span_context: SpanContext
    deferred: bool


def inject_headers(
    headers: MutableMapping[str, str], context: Context | None = None, *, b3: bool = False
) -> None:
    """Write `traceparent`/`tracestate` for the span in `context` (default: current).

    With `b3=True` also write the single `b3` header, for Zipkin-instrumented peers.
    Nothing is written when there is no valid span.
    """
    _W3C.inject(headers, context=context)
    span_context = trace.get_current_span(context).get_span_context()
    if b3 and span_context.is_valid:
        sampled = "1" if span_context.trace_flags.sampled else "0"
        headers["b3"] = f"{span_context.trace_id:032x}-{span_context.span_id:016x}-{sampled}"


def extract_context(headers: Mapping[str, str], context: Context | None = None) -> Context:
    """The context continuing the trace in `headers`, or `context` (default: empty) if none.

    Header names are case-insensitive. W3C `traceparent` wins over B3; the single
    `b3` header wins over the `X-B3-*` headers.
    """
    carrier = {key.lower(): value for key, value in headers.items()}
    base = context if context is not None else Context()
    remote = _from_w3c(carrier) or _from_b3_single(carrier) or _from_b3_multi(carrier)
    if remote is None:
        return base
    found = trace.set_span_in_context(NonRecordingSpan(remote.span_context), base)
    return set_value(_SAMPLING_DEFERRED, True, found) if remote.deferred else found


def inject_attributes(attributes: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write `traceparent`/`tracestate` into message attributes."""
    inject_headers(attributes, context)


def extract_from_attributes(
    attributes: Mapping[str, str], context: Context | None = None
) -> Context:
    """The context continuing the trace carried in message attributes."""
    # Foreign producers (Brave's Kafka/JMS instrumentation) put a `b3` entry there too.
    return extract_context(attributes, context)


def sampling_deferred(context: Context | None = None) -> bool:
    """Whether the remote parent in `context` came from B3 without a sampling decision."""
    return bool(get_value(_SAMPLING_DEFERRED, context))


def _from_w3c(carrier: Mapping[str, str]) -> _Remote | None:
    if "traceparent" not in carrier:
        return None
    span_context = trace.get_current_span(_W3C.extract(carrier, Context())).get_span_context()
    return _Remote(span_context, deferred=False) if span_context.is_valid else None


def _from_b3_single(carrier: Mapping[str, str]) -> _Remote | None:
    """`b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`.

    A lone sampling state (`b3: 0`) carries no ids to continue, so it is ignored.
    """
    value = carrier.get("b3", "").strip()
    parts = value.split("-")
    if len(parts) < 2 or len(parts) > 4:
        return None
    trace_id, span_id, *rest = parts
    sampling = rest[0] if rest else None
    if sampling is not None and sampling not in _SINGLE_SAMPLING:
        return None
    if len(rest) == 2 and not _SPAN_ID.fullmatch(rest[1]):
        return None
    sampled = None if sampling is None else _SINGLE_SAMPLING[sampling]
    return _remote(trace_id, span_id, sampled)


def _from_b3_multi(carrier: Mapping[str, str]) -> _Remote | None:
    trace_id = carrier.get("x-b3-traceid", "").strip()
    span_id = carrier.get("x-b3-spanid", "").strip()
    if not trace_id or not span_id:
        return None
    # Debug (X-B3-Flags: 1) implies an accept decision.
    if carrier.get("x-b3-flags", "").strip() == "1":
        return _remote(trace_id, span_id, True)
    raw = carrier.get("x-b3-sampled", "").strip().lower()
    if not raw:
        return _remote(trace_id, span_id, None)
    if raw not in _MULTI_SAMPLING:
        return None
    return _remote(trace_id, span_id, _MULTI_SAMPLING[raw])


def _remote(trace_id: str, span_id: str, sampled: bool | None) -> _Remote | None:
    if not _TRACE_ID.fullmatch(trace_id) or not _SPAN_ID.fullmatch(span_id):
        return None
    # A 64-bit trace id is left-padded with zeros to OpenTelemetry's 128 bits.
    span_context = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
    )
    if not span_context.is_valid:
        return None
    return _Remote(span_context, deferred=sampled is None)
