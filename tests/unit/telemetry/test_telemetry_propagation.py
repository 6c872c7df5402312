"""W3C and B3 extraction, header and message-attribute round trips."""

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from mezzo.telemetry import (
    Tracing,
    extract_context,
    extract_from_attributes,
    inject_attributes,
    inject_headers,
)
from mezzo.telemetry.propagation import sampling_deferred

TRACE_128 = "463ac35c9f6413ad48485a3953bb6124"
TRACE_64 = "a3ce929d0e0e4736"
SPAN = "a2fb4a1d1a96d312"
PARENT = "0020000000000001"


def _context_with(trace_id: int, span_id: int, sampled: bool = True) -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    span_context = SpanContext(
        trace_id,
        span_id,
        is_remote=False,
        trace_flags=flags,
        trace_state=TraceState([("vendor", "value")]),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def _remote(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


def test_traceparent_round_trip() -> None:
    headers: dict[str, str] = {}
    inject_headers(headers, _context_with(int(TRACE_128, 16), int(SPAN, 16)))

    assert headers["traceparent"] == f"00-{TRACE_128}-{SPAN}-01"
    assert headers["tracestate"] == "vendor=value"
    found = _remote(extract_context(headers))
    assert (found.trace_id, found.span_id) == (int(TRACE_128, 16), int(SPAN, 16))
    assert found.is_remote and found.trace_flags.sampled
    assert found.trace_state.get("vendor") == "value"


def test_extraction_ignores_header_case() -> None:
    found = _remote(extract_context({"TraceParent": f"00-{TRACE_128}-{SPAN}-00"}))

    assert found.trace_id == int(TRACE_128, 16)
    assert not found.trace_flags.sampled


def test_current_span_is_injected_by_default(tracing: Tracing) -> None:
    with tracing.tracer("test").start_as_current_span("op") as span:
        headers: dict[str, str] = {}
        inject_headers(headers)

    expected = span.get_span_context()
    # The flags byte may also carry W3C level 2's "random trace id" bit.
    assert headers["traceparent"].startswith(
        f"00-{expected.trace_id:032x}-{expected.span_id:016x}-"
    )
    assert _remote(extract_context(headers)).trace_flags.sampled


def test_nothing_injected_without_a_span() -> None:
    headers: dict[str, str] = {}
    inject_headers(headers, Context(), b3=True)

    assert headers == {}


def test_inject_b3_single_header_on_request() -> None:
    headers: dict[str, str] = {}
    inject_headers(headers, _context_with(int(TRACE_128, 16), int(SPAN, 16), False), b3=True)

    assert headers["b3"] == f"{TRACE_128}-{SPAN}-0"


def test_no_trace_headers_give_the_given_or_an_empty_context() -> None:
    base = _context_with(1, 2)

    assert extract_context({"accept": "*/*"}, base) is base
    assert not _remote(extract_context({})).is_valid
    assert not _remote(extract_context({"traceparent": "garbage"})).is_valid


@pytest.mark.parametrize(
    ("value", "trace_id", "sampled", "deferred"),
    [
        (f"{TRACE_128}-{SPAN}-1", TRACE_128, True, False),
        (f"{TRACE_64}-{SPAN}-1", "0" * 16 + TRACE_64, True, False),
        (f"{TRACE_128}-{SPAN}-0", TRACE_128, False, False),
        (f"{TRACE_128}-{SPAN}-d", TRACE_128, True, False),
        (f"{TRACE_128}-{SPAN}-1-{PARENT}", TRACE_128, True, False),
        (f"{TRACE_64}-{SPAN}", "0" * 16 + TRACE_64, False, True),
    ],
)
def test_b3_single_header(value: str, trace_id: str, sampled: bool, deferred: bool) -> None:
    context = extract_context({"B3": value})

    found = _remote(context)
    assert f"{found.trace_id:032x}" == trace_id
    assert found.span_id == int(SPAN, 16)
    assert found.is_remote
    assert found.trace_flags.sampled is sampled
    assert sampling_deferred(context) is deferred


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "1",
        "d",
        "",
        f"{TRACE_128}",
        f"{TRACE_128}-{SPAN}-2",
        f"{TRACE_128}-{SPAN}-1-xyz",
        f"{TRACE_128.upper()}-{SPAN}-1",
        f"{TRACE_128[:-1]}-{SPAN}-1",
        f"{'0' * 32}-{SPAN}-1",
        f"{TRACE_128}-{'0' * 16}-1",
        f"{TRACE_128}-{SPAN}-1-{PARENT}-extra",
    ],
)
def test_b3_single_header_without_a_continuable_trace_is_ignored(value: str) -> None:
    assert not _remote(extract_context({"b3": value})).is_valid


@pytest.mark.parametrize(
    ("extra", "sampled", "deferred"),
    [
        ({"X-B3-Sampled": "1"}, True, False),
        ({"X-B3-Sampled": "0"}, False, False),
        ({"X-B3-Sampled": "true"}, True, False),
        ({"X-B3-Sampled": "false"}, False, False),
        ({"X-B3-Flags": "1"}, True, False),
        ({"X-B3-Flags": "1", "X-B3-Sampled": "0"}, True, False),
        ({}, False, True),
    ],
)
def test_b3_multi_headers(extra: dict[str, str], sampled: bool, deferred: bool) -> None:
    headers = {"X-B3-TraceId": TRACE_128, "x-b3-spanid": SPAN, "X-B3-ParentSpanId": PARENT}
    context = extract_context({**headers, **extra})

    found = _remote(context)
    assert (found.trace_id, found.span_id) == (int(TRACE_128, 16), int(SPAN, 16))
    assert found.trace_flags.sampled is sampled
    assert sampling_deferred(context) is deferred


def test_b3_multi_headers_with_64_bit_trace_id() -> None:
    found = _remote(extract_context({"X-B3-TraceId": TRACE_64, "X-B3-SpanId": SPAN}))

    assert found.trace_id == int(TRACE_64, 16)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-B3-TraceId": TRACE_128},
        {"X-B3-SpanId": SPAN},
        {"X-B3-TraceId": TRACE_128, "X-B3-SpanId": SPAN, "X-B3-Sampled": "maybe"},
        {"X-B3-TraceId": "xyz", "X-B3-SpanId": SPAN},
    ],
)
def test_incomplete_b3_multi_headers_are_ignored(headers: dict[str, str]) -> None:
    assert not _remote(extract_context(headers)).is_valid


def test_precedence_w3c_then_b3_single_then_multi() -> None:
    other_trace = "1" * 32
    multi = {"X-B3-TraceId": "2" * 32, "X-B3-SpanId": SPAN, "X-B3-Sampled": "1"}
    single = {"b3": f"{other_trace}-{SPAN}-1"}
    w3c = {"traceparent": f"00-{TRACE_128}-{SPAN}-01"}

    assert _remote(extract_context({**multi, **single, **w3c})).trace_id == int(TRACE_128, 16)
    assert _remote(extract_context({**multi, **single})).trace_id == int(other_trace, 16)
    assert _remote(extract_context(multi)).trace_id == int("2" * 32, 16)


def test_invalid_traceparent_falls_back_to_b3() -> None:
    headers = {"traceparent": "00-zz-yy-01", "b3": f"{TRACE_128}-{SPAN}-1"}

    assert _remote(extract_context(headers)).trace_id == int(TRACE_128, 16)


def test_message_attributes_round_trip() -> None:
    attributes = {"content-type": "application/json"}
    inject_attributes(attributes, _context_with(int(TRACE_128, 16), int(SPAN, 16)))

    assert set(attributes) == {"content-type", "traceparent", "tracestate"}
    found = _remote(extract_from_attributes(attributes))
    assert (found.trace_id, found.span_id) == (int(TRACE_128, 16), int(SPAN, 16))
    assert found.trace_state.get("vendor") == "value"
