"""Metric naming, idempotent registration, exposition and isolation of registries."""

import prometheus_client
import pytest

from mezzo.telemetry import Metrics


def test_counter_with_unit_total_is_exposed_once_suffixed(metrics: Metrics) -> None:
    requests = metrics.counter("api", "requests", "total", "Requests.", labels=("method",))
    requests.labels("GET").inc()

    body, _ = metrics.render()

    assert b'mezzo_api_requests_total{method="GET"} 1.0' in body
    assert b"_total_total" not in body


def test_counter_with_another_unit_keeps_it_before_total(metrics: Metrics) -> None:
    metrics.counter("gateway", "sent", "bytes", "Bytes sent.").inc(10)

    body, _ = metrics.render()

    assert b"mezzo_gateway_sent_bytes_total 10.0" in body


def test_gauge_and_histogram_names(metrics: Metrics) -> None:
    metrics.gauge("cache", "entries", "count", "Entries.").set(3)
    metrics.histogram(
        "broker", "publish_duration", "seconds", "Latency.", buckets=(0.1, 1.0)
    ).observe(0.5)

    body, _ = metrics.render()

    assert b"mezzo_cache_entries_count 3.0" in body
    assert b'mezzo_broker_publish_duration_seconds_bucket{le="1.0"} 1.0' in body
    assert b"mezzo_broker_publish_duration_seconds_count 1.0" in body


def test_asking_twice_returns_the_same_metric(metrics: Metrics) -> None:
    first = metrics.counter("api", "requests", "total", "Requests.", labels=("route",))
    second = metrics.counter("api", "requests", "total", "Other doc.", labels=("route",))
    histogram = metrics.histogram("api", "latency", "seconds", "Latency.")

    assert second is first
    assert metrics.histogram("api", "latency", "seconds", "Latency.") is histogram


def test_same_name_with_other_shape_is_rejected(metrics: Metrics) -> None:
    metrics.counter("api", "requests", "total", "Requests.", labels=("route",))

    with pytest.raises(ValueError, match="already registered"):
        metrics.counter("api", "requests", "total", "Requests.", labels=("status",))
    metrics.histogram("api", "latency", "seconds", "Latency.", buckets=(1.0,))
    with pytest.raises(ValueError, match="already registered"):
        metrics.histogram("api", "latency", "seconds", "Latency.", buckets=(2.0,))


@pytest.mark.parametrize(
    ("service", "what", "unit"),
    [
        ("Api", "requests", "total"),
        ("api", "re-quests", "total"),
        ("api", "", "total"),
        ("api", "a__b", "total"),
        ("api", "requests", "Seconds"),
        ("_api", "x", "total"),
    ],
)
def test_parts_must_be_snake_case(metrics: Metrics, service: str, what: str, unit: str) -> None:
    with pytest.raises(ValueError, match="snake_case"):
        metrics.counter(service, what, unit, "doc")


def test_label_names_must_be_snake_case(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="snake_case"):
        metrics.gauge("api", "inflight", "requests", "doc", labels=("Route",))


def test_total_is_reserved_for_counters(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="reserved for counters"):
        metrics.gauge("api", "requests", "total", "doc")


def test_two_instances_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.counter("api", "requests", "total", "Requests.").inc()
    second.counter("api", "requests", "total", "Requests.")

    assert first.registry.get_sample_value("mezzo_api_requests_total") == 1.0
    assert second.registry.get_sample_value("mezzo_api_requests_total") == 0.0
    assert prometheus_client.REGISTRY.get_sample_value("mezzo_api_requests_total") is None


def test_render_defaults_to_prometheus_text(metrics: Metrics) -> None:
    metrics.counter("api", "requests", "total", "Requests.").inc()

    body, content_type = metrics.render(None)

    assert content_type.startswith("text/plain")
    assert b"# TYPE mezzo_api_requests_total counter" in body
    assert b"# EOF" not in body


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "text/plain;q=0.5, Application/OpenMetrics-Text;version=1.0.0;q=0.9",
    ],
)
def test_render_speaks_openmetrics_when_asked(metrics: Metrics, accept: str) -> None:
    metrics.histogram("api", "request_duration", "seconds", "Latency.").observe(0.2)

    body, content_type = metrics.render(accept)

    assert content_type.startswith("application/openmetrics-text")
    assert b"# UNIT mezzo_api_request_duration_seconds seconds" in body
    assert body.endswith(b"# EOF\n")


def test_render_ignores_openmetrics_refused_with_q_zero(metrics: Metrics) -> None:
    _, content_type = metrics.render("application/openmetrics-text;q=0, text/plain")

    assert content_type.startswith("text/plain")
