"""Telemetry every Mezzo service shares: metrics, self-tracing, structured logs.

The names below load their module on first use: the SDK imports ``mezzo.telemetry.propagation``
alone, and should not pay for the HTTP middleware, metrics and the tracing SDK."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "TelemetryMiddleware": "http", "route_template": "http",
    "add_trace_context": "logging", "configure_logging": "logging", "get_logger": "logging",
    "DEFAULT_BUCKETS": "metrics", "Metrics": "metrics", "metric_name": "metrics",
    "extract_context": "propagation", "extract_from_attributes": "propagation",
    "inject_attributes": "propagation", "inject_headers": "propagation",
    "Tracing": "tracing",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mezzo.telemetry' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mezzo.telemetry.{home}"), name)
