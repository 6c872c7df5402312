"""opentelemetry (alias tracing): a server span per request, continuing the caller's trace, into Mezzo's tracing.

The span continues a W3C ``traceparent`` (or B3: ``b3``, ``X-B3-*``) the client sent, or starts a
trace; the request goes upstream with a ``traceparent`` naming this span (and ``b3`` when the
client used B3), so the upstream's spans are its children. The span carries the route, the
upstream and node, the consumer and the status, and ends once the response is out. Spans go
through the node's tracer provider (``MEZZO_TRACING``, exported to Mezzo's tracing over OTLP).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import Field, field_validator

from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.vars import check, getter
from mezzo.telemetry.propagation import extract_context, inject_headers

log = structlog.get_logger("mezzo.gateway")
SPAN = "otel_span"
PROPAGATION = (b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid",
               b"x-b3-sampled", b"x-b3-flags")
_fallback: Any = None


class SamplerOptions(Config):
    fraction: float = Field(1.0, ge=0, le=1, description="trace_id_ratio, and parent_base for a new trace")


class Sampler(Config):
    name: Literal["always_on", "always_off", "trace_id_ratio", "parent_base"] = "always_on"
    options: SamplerOptions = Field(default_factory=SamplerOptions)


class OpenTelemetryConfig(Config):
    sampler: Sampler = Field(default_factory=Sampler)
    additional_attributes: list[str] = Field(default_factory=list, description="variables to add, e.g. http_x_tenant")
    additional_header_prefix_attributes: list[str] = Field(default_factory=list,
                                                           description="request headers starting with these")

    _vars = field_validator("additional_attributes")(classmethod(lambda cls, v: check(v)))


@register
class OpenTelemetry(Plugin):
    name = "opentelemetry"
    priority = 12009
    schema = OpenTelemetryConfig

    def __init__(self, conf: OpenTelemetryConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.extra = [(name.removeprefix("$"), getter(name)) for name in conf.additional_attributes]
        self.prefixes = tuple(p.lower().encode("latin-1") for p in conf.additional_header_prefix_attributes)
        self._tracer: tuple[Any, trace.Tracer] | None = None

    def tracer(self) -> trace.Tracer:
        """The node's tracer (``runtime.tracing``); without one, a provider that exports nothing, so
        the trace still continues to the upstream."""
        global _fallback
        tracing = getattr(self.runtime, "tracing", None)
        if self._tracer is None or self._tracer[0] is not tracing:
            if tracing is not None:
                self._tracer = (tracing, tracing.tracer("mezzo.gateway"))
            else:
                if _fallback is None:
                    log.warning("opentelemetry: the gateway has no tracer provider; spans are not exported")
                    _fallback = TracerProvider(shutdown_on_exit=False)
                self._tracer = (None, _fallback.get_tracer("mezzo.gateway"))
        return self._tracer[1]

    def rewrite(self, ctx: Ctx) -> None:
        request = ctx.request
        carrier: dict[str, str] = {}
        for name, value in request.headers:
            if name in PROPAGATION:
                key = name.decode("latin-1")
                carrier[key] = carrier[key] + "," + value.decode("latin-1") if key in carrier \
                    else value.decode("latin-1")
        parent = extract_context(carrier)
        if not self._sampled(parent):
            return
        route = ctx.route
        attributes: dict[str, Any] = {
            "http.request.method": request.method, "url.path": request.path, "url.scheme": request.scheme,
            "client.address": request.client_ip, "mezzo.gateway.route": route.ref,
        }
        if request.query:
            attributes["url.query"] = request.query
        if request.host:
            attributes["server.address"] = request.host
        agent = request.header(b"user-agent")
        if agent:
            attributes["user_agent.original"] = agent
        for name, read in self.extra:
            value = read(ctx)
            if value is not None:
                attributes[name] = value
        if self.prefixes:
            for name, value in request.headers:
                if name.startswith(self.prefixes):
                    attributes[f"http.request.header.{name.decode('latin-1')}"] = value.decode("latin-1")
        span = self.tracer().start_span(f"{request.method} {route.name}", context=parent, kind=SpanKind.SERVER,
                                        attributes=attributes)
        ctx.vars[SPAN] = span
        out: dict[str, str] = {}
        inject_headers(out, trace.set_span_in_context(span), b3=any(k.startswith(("b3", "x-b3")) for k in carrier))
        request.headers = [(k, v) for k, v in request.headers if k not in PROPAGATION]
        request.headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in out.items())

    def _sampled(self, parent: Any) -> bool:
        sampler = self.conf.sampler
        if sampler.name == "always_on":
            return True
        if sampler.name == "always_off":
            return False
        remote = trace.get_current_span(parent).get_span_context()
        fraction = sampler.options.fraction
        if sampler.name == "parent_base" and remote.is_valid:
            return bool(remote.trace_flags.sampled)
        if remote.is_valid:  # the same decision for the same trace, wherever it is made
            return (remote.trace_id & 0xFFFFFFFFFFFFFFFF) < fraction * 2**64
        return random.random() < fraction

    def log(self, ctx: Ctx) -> None:
        span = ctx.vars.pop(SPAN, None)
        if span is None:
            return
        status = ctx.status
        span.set_attribute("http.response.status_code", status)
        if ctx.upstream is not None:
            span.set_attribute("mezzo.gateway.upstream", ctx.upstream.name)
        if ctx.node is not None:
            span.set_attribute("network.peer.address", ctx.node.host)
            span.set_attribute("network.peer.port", ctx.node.port)
        if ctx.consumer is not None:
            span.set_attribute("mezzo.gateway.consumer", ctx.consumer.ref)
        if ctx.bytes_sent:
            span.set_attribute("http.response.body.size", ctx.bytes_sent)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR, ctx.error or None))
        span.end()


@register
class Tracing(OpenTelemetry):
    """The same plugin under the name the issue uses."""

    name = "tracing"
