"""The owned TracerProvider: export, sampling, isolation from the global provider."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mezzo.telemetry import Tracing, extract_context
from mezzo.telemetry.tracing import _traces_url

TRACE = "463ac35c9f6413ad48485a3953bb6124"
SPAN = "a2fb4a1d1a96d312"


def _tracing(ratio: float) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(
        "svc", sample_ratio=ratio, span_processors=[SimpleSpanProcessor(exporter)]
    ), exporter


def test_spans_are_exported_with_the_service_name(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    with tracing.tracer("mezzo.test").start_as_current_span("work"):
        pass

    (span,) = spans.get_finished_spans()
    assert span.name == "work"
    assert span.resource.attributes["service.name"] == "mezzo-test"


def test_the_global_tracer_provider_is_left_alone(tracing: Tracing) -> None:
    assert trace.get_tracer_provider() is not tracing.provider


def test_two_instances_export_separately() -> None:
    (first, first_spans), (second, second_spans) = _tracing(1.0), _tracing(1.0)
    with first.tracer("t").start_as_current_span("one"):
        pass

    assert [s.name for s in first_spans.get_finished_spans()] == ["one"]
    assert second_spans.get_finished_spans() == ()
    first.shutdown()
    second.shutdown()


def test_ratio_zero_drops_roots_but_follows_a_sampled_parent() -> None:
    tracing, spans = _tracing(0.0)
    tracer = tracing.tracer("t")
    with tracer.start_as_current_span("root"):
        pass
    parent = extract_context({"traceparent": f"00-{TRACE}-{SPAN}-01"})
    with tracer.start_as_current_span("child", context=parent):
        pass

    assert [s.name for s in spans.get_finished_spans()] == ["child"]
    tracing.shutdown()


def test_b3_deferred_parent_is_decided_here() -> None:
    deferred = extract_context({"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN})
    denied = extract_context({"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN, "X-B3-Sampled": "0"})
    sampling, sampling_spans = _tracing(1.0)
    dropping, dropping_spans = _tracing(0.0)

    for tracing in (sampling, dropping):
        with tracing.tracer("t").start_as_current_span("deferred", context=deferred):
            with tracing.tracer("t").start_as_current_span("local-child"):
                pass
        with tracing.tracer("t").start_as_current_span("denied", context=denied):
            pass

    assert sorted(s.name for s in sampling_spans.get_finished_spans()) == [
        "deferred",
        "local-child",
    ]
    assert dropping_spans.get_finished_spans() == ()
    sampling.shutdown()
    dropping.shutdown()


def test_shutdown_twice_is_harmless(tracing: Tracing) -> None:
    tracing.shutdown()
    tracing.shutdown()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"service_name": ""},
        {"service_name": "s", "exporter": "jaeger"},
        {"service_name": "s", "sample_ratio": 1.5},
        {"service_name": "s", "sample_ratio": -0.1},
    ],
)
def test_invalid_parameters_are_rejected(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        Tracing(**kwargs)


def test_otlp_exporter_builds_and_stops_without_a_collector() -> None:
    tracing = Tracing("svc", exporter="otlp", otlp_endpoint="http://127.0.0.1:9")
    tracing.shutdown()


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://x.example/otlp/v1/traces", "https://x.example/otlp/v1/traces"),
    ],
)
def test_otlp_endpoint_accepts_a_base_url(endpoint: str, url: str) -> None:
    assert _traces_url(endpoint) == url
