"""Telemetry every Mezzo service shares: metrics, self-tracing, structured logs."""

from mezzo.telemetry.http import TelemetryMiddleware, route_template
from mezzo.telemetry.logging import add_trace_context, configure_logging, get_logger
from mezzo.telemetry.metrics import DEFAULT_BUCKETS, Metrics, metric_name
from mezzo.telemetry.propagation import (
    extract_context,
    extract_from_attributes,
    inject_attributes,
    inject_headers,
)
from mezzo.telemetry.tracing import Tracing

__all__ = [
    "DEFAULT_BUCKETS",
    "Metrics",
    "TelemetryMiddleware",
    "Tracing",
    "add_trace_context",
    "configure_logging",
    "extract_context",
    "extract_from_attributes",
    "get_logger",
    "inject_attributes",
    "inject_headers",
    "metric_name",
    "route_template",
]
