"""ASGI middleware giving every HTTP request RED metrics and a server span."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mezzo.telemetry.metrics import Metrics
from mezzo.telemetry.propagation import extract_context
from mezzo.telemetry.tracing import Tracing

__all__ = ["UNMATCHED_ROUTE", "TelemetryMiddleware", "route_template"]

UNMATCHED_ROUTE = "unmatched"
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_PROPAGATION_HEADERS = frozenset(
    {
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    }
)
# nginx's convention for "client went away before a response": not a server error.
_CLIENT_CLOSED = 499
# Label sets whose metric children are kept at hand; past this many (a flood of odd methods or
# statuses) the cache starts over rather than grow.
_MAX_CHILDREN = 1024


class TelemetryMiddleware:
    """Counts requests, times them and traces them, labelled by route template.

    Only `http` scopes are observed; `websocket` and `lifespan` pass through
    untouched. Bodies stream through unbuffered. Paths in `exclude_paths`
    (probes, the metrics endpoint) are not observed at all.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        tracing: Tracing | None = None,
        service: str = "api",
        *,
        exclude_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self._tracer = tracing.tracer("mezzo.telemetry.http") if tracing is not None else None
        self._exclude = frozenset(exclude_paths)
        self._requests = metrics.counter(
            service,
            "requests",
            "total",
            "HTTP requests served.",
            labels=("method", "route", "status"),
        )
        self._duration = metrics.histogram(
            service,
            "request_duration",
            "seconds",
            "Time from request start until the response body was sent.",
            labels=("method", "route"),
        )
        # (method, route, status) -> its request counter and duration histogram: `labels()`
        # checks, converts and locks on every call
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._exclude:
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "_OTHER"
        recording = _RouteRecordingScope(scope)
        span = self._start_span(scope, method) if self._tracer is not None else None
        status: int | None = None
        failure: BaseException | None = None

        async def send_watching_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            with _current(span):
                await self.app(recording, receive, send_watching_status)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            scope.update(recording)  # outer layers see what routing wrote, as without us
            route = route_template(recording)
            if status is None:
                status = _CLIENT_CLOSED if isinstance(failure, asyncio.CancelledError) else 500
            requests, duration = self._children_of(method, route or UNMATCHED_ROUTE, status)
            requests.inc()
            duration.observe(elapsed)
            if span is not None:
                _finish_span(span, method, route, status, failure)

    def _children_of(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= _MAX_CHILDREN:
                self._children.clear()
            children = self._children[key] = (
                self._requests.labels(method, route, str(status)),
                self._duration.labels(method, route),
            )
        return children

    def _start_span(self, scope: Scope, method: str) -> Span:
        assert self._tracer is not None
        headers: dict[str, str] = {}
        user_agent = None
        for name, value in scope["headers"]:
            if name in _PROPAGATION_HEADERS:
                key = name.decode("latin-1")
                text = value.decode("latin-1")
                # Repeated tracestate lines form one list; elsewhere the first value wins.
                if key == "tracestate" and key in headers:
                    headers[key] += "," + text
                else:
                    headers.setdefault(key, text)
            elif name == b"user-agent" and user_agent is None:
                user_agent = value.decode("latin-1")
        return self._tracer.start_span(
            method,
            context=extract_context(headers),
            kind=SpanKind.SERVER,
            attributes=_request_attributes(scope, method, user_agent),
        )


def route_template(scope: MutableMapping[str, Any]) -> str | None:
    """The template of the route that served `scope` (e.g. `/v1/resources/{kind}`), if any.

    Needs the scope the middleware handed to the app, which remembers every route
    a router assigned; Mount prefixes are joined in front of the final route.
    """
    routes: list[Any] = getattr(scope, "routes", None) or (
        [scope["route"]] if "route" in scope else []
    )
    if not routes:
        return None
    *outer, last = routes
    prefix = "".join(route.path for route in outer if isinstance(route, Mount))
    if isinstance(last, Mount):
        # A mounted router that found nothing is a 404, not the mount point itself.
        return None if last.routes else prefix + last.path
    return prefix + _own_template(scope, last)


def _own_template(scope: MutableMapping[str, Any], route: Any) -> str:
    # FastAPI keeps included routers nested, so an APIRoute's path lacks the
    # include_router() prefix; FastAPI's effective route context has the full one.
    effective = scope.get("fastapi", {}).get("effective_route_context")
    if effective is not None and getattr(effective, "original_route", None) is route:
        full = getattr(effective, "path_format", None)
        if isinstance(full, str) and full:
            return full
    path = getattr(route, "path", "")
    return path if isinstance(path, str) else ""


class _RouteRecordingScope(dict[str, Any]):
    """The request scope, remembering each route routers assign to it, outermost first."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope)
        self.routes: list[Any] = []

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "route":
            self._record(value)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        changes = dict(*args, **kwargs)
        if "route" in changes:
            self._record(changes["route"])
        super().update(changes)

    def _record(self, route: Any) -> None:
        if not self.routes or self.routes[-1] is not route:
            self.routes.append(route)


def _current(span: Span | None) -> AbstractContextManager[Any]:
    if span is None:
        return nullcontext()
    return trace.use_span(span, record_exception=False, set_status_on_exception=False)


def _request_attributes(scope: Scope, method: str, user_agent: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = scope["method"]
    server = scope.get("server")
    if server:
        attributes["server.address"] = server[0]
        if server[1] is not None:
            attributes["server.port"] = server[1]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return attributes


def _finish_span(
    span: Span, method: str, route: str | None, status: int, failure: BaseException | None
) -> None:
    if route is not None:
        span.set_attribute("http.route", route)
        span.update_name(f"{method} {route}")
    span.set_attribute("http.response.status_code", status)
    if failure is not None and not isinstance(failure, asyncio.CancelledError):
        span.record_exception(failure)
        span.set_attribute("error.type", type(failure).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(failure) or type(failure).__name__))
    elif status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()
