"""Fixtures for telemetry tests: a Tracing instance whose spans land in memory."""

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mezzo.telemetry import Metrics, Tracing


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(spans: InMemorySpanExporter) -> Iterator[Tracing]:
    owned = Tracing("mezzo-test", span_processors=[SimpleSpanProcessor(spans)])
    yield owned
    owned.shutdown()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()
