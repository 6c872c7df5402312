"""Self-tracing: an OpenTelemetry TracerProvider owned by one node, never the global one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import (
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from mezzo.telemetry.propagation import (
    extract_context,
    extract_from_attributes,
    inject_attributes,
    inject_headers,
    sampling_deferred,
)

__all__ = [
    "Exporter",
    "Tracing",
    "extract_context",
    "extract_from_attributes",
    "inject_attributes",
    "inject_headers",
]

Exporter = Literal["none", "otlp", "console"]
_OTLP_TRACES_PATH = "/v1/traces"


class Tracing:
    """Creates the node's tracers; call `shutdown()` on stop to flush pending spans.

    `span_processors` adds processors next to the configured exporter (tests pass
    a SimpleSpanProcessor over an InMemorySpanExporter).
    """

    def __init__(
        self,
        service_name: str,
        exporter: Exporter = "none",
        otlp_endpoint: str | None = None,
        sample_ratio: float = 1.0,
        *,
        span_processors: Sequence[SpanProcessor] = (),
        resource_attributes: Mapping[str, str] | None = None,
    ) -> None:
        if not service_name:
            raise ValueError("service_name must not be empty")
        if exporter not in get_args(Exporter):
            raise ValueError(f"exporter must be one of {get_args(Exporter)}, got {exporter!r}")
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be within [0, 1], got {sample_ratio}")
        self.service_name = service_name
        resource = Resource.create({**(resource_attributes or {}), "service.name": service_name})
        # shutdown_on_exit=False: an atexit hook per instance would pin every provider
        # created in a test process; the node's lifecycle calls shutdown() instead.
        self.provider = TracerProvider(
            sampler=_DeferAwareSampler(sample_ratio), resource=resource, shutdown_on_exit=False
        )
        for processor in (*_exporting_processors(exporter, otlp_endpoint), *span_processors):
            self.provider.add_span_processor(processor)
        self._closed = False

    def tracer(self, name: str, version: str | None = None) -> trace.Tracer:
        """A tracer for one instrumentation scope, e.g. `mezzo.messaging`."""
        return self.provider.get_tracer(name, version)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export finished spans now; False if the exporters did not finish in time."""
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self.provider.force_flush()
        self.provider.shutdown()


def _exporting_processors(exporter: Exporter, otlp_endpoint: str | None) -> list[SpanProcessor]:
    if exporter == "console":
        return [SimpleSpanProcessor(ConsoleSpanExporter())]
    if exporter == "otlp":
        # Imported lazily: the exporter pulls in protobuf and requests.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = _traces_url(otlp_endpoint) if otlp_endpoint else None
        return [BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))]
    return []


def _traces_url(endpoint: str) -> str:
    """Accept a collector base URL (`http://host:4318`) as well as the full traces URL."""
    if urlsplit(endpoint).path.strip("/"):
        return endpoint
    return endpoint.rstrip("/") + _OTLP_TRACES_PATH


class _DeferAwareSampler(Sampler):
    """Parent-based ratio sampling that lets a B3 "defer" parent be sampled here.

    B3 without a sampling state hands the decision to the receiver, so such a
    remote parent is treated like a root (ratio on the shared trace id) instead
    of as "not sampled".
    """

    def __init__(self, ratio: float) -> None:
        self._root = TraceIdRatioBased(ratio)
        self._parent_based = ParentBased(self._root)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        decide = self._parent_based
        if parent.is_valid and parent.is_remote and sampling_deferred(parent_context):
            decide = self._root
        return decide.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"MezzoSampler{{{self._parent_based.get_description()}}}"
