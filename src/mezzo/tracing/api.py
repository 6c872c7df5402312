"""HTTP of tracing: OTLP ingest, the Jaeger query API (what Jaeger's UI and Grafana call), Zipkin's v2
API (ingest and query, on the Zipkin port), and Mezzo's own search, trace paging and export."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import bad_request, not_found
from mezzo.tracing.collector import Collector, IngestError, read_body
from mezzo.tracing.formats import jaeger_trace, kind_name, otlp_json, zipkin_span
from mezzo.tracing.store import Query as SpanQuery
from mezzo.tracing.store import TraceStore

router = APIRouter(tags=["tracing"])
HEX = r"^[0-9a-fA-F]{1,32}$"
KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}


def _store(request: Any) -> TraceStore:
    return request.app.state.node.service(TraceStore)  # type: ignore[no-any-return]


def _collector(request: Any) -> Collector:
    return request.app.state.node.service(Collector)  # type: ignore[no-any-return]


def _error_response(exc: IngestError, content_type: str | None) -> Response:
    ctype = (content_type or "").split(";")[0].strip().lower()
    body, media = exc.body(ctype)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return Response(body, status_code=exc.status, media_type=media, headers=headers)


async def _body(request: Any, collector: Collector, protocol: str) -> bytes:
    try:
        return await read_body(request.stream(), request.headers.get("content-length"))
    except IngestError as exc:
        raise collector.refuse(protocol, exc) from None


async def otlp_ingest(request: Any) -> Any:
    """POST /v1/traces: OTLP/HTTP, protobuf or JSON."""
    ctype = request.headers.get("content-type")
    collector = _collector(request)
    try:
        body, media = await collector.otlp(await _body(request, collector, "otlp"), ctype,
                                           request.headers.get("content-encoding"))
    except IngestError as exc:
        return _error_response(exc, ctype)
    return Response(body, media_type=media)


@router.post("/v1/traces", summary="OTLP/HTTP trace ingest (protobuf or JSON)")
async def otlp_on_api(request: Request, caller: Caller) -> Any:
    require(caller, Verb.USE)
    return await otlp_ingest(request)


def _trace_id(text: str, field: str = "traceID") -> str:
    text = text.lower()
    if not text or len(text) > 32 or any(c not in "0123456789abcdef" for c in text):
        raise bad_request(f"{field}: a trace id is up to 32 hex digits", field=field)
    return text.rjust(32, "0")


# --- Jaeger query API ------------------------------------------------------------------------

def _jaeger(data: Any, **extra: Any) -> dict[str, Any]:
    return {"data": data, "total": len(data) if isinstance(data, list) else 0, "limit": 0, "offset": 0,
            "errors": None, **extra}


def _json(doc: Any) -> Response:
    """Traces as JSON straight from orjson: FastAPI's encoder walking every tag of every span costs more
    than the query."""
    return Response(orjson.dumps(doc), media_type="application/json")


@router.get("/api/services", summary="Jaeger: services")
async def jaeger_services(request: Request, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    return _jaeger(await _store(request).services())


@router.get("/api/services/{service}/operations", summary="Jaeger: operation names of a service")
async def jaeger_service_operations(request: Request, service: str, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    return _jaeger(sorted({name for name, _ in await _store(request).operations(service)}))


@router.get("/api/operations", summary="Jaeger: operations with span kinds")
async def jaeger_operations(request: Request, caller: Caller, service: str,
                            spanKind: str | None = None) -> dict[str, Any]:
    require(caller, Verb.READ)
    kind = KINDS.get(spanKind) if spanKind else None
    ops = await _store(request).operations(service, kind)
    return _jaeger([{"name": name, "spanKind": kind_name(k) if k in KINDS.values() else ""} for name, k in ops])


def _duration_us(text: str | None, name: str) -> int | None:
    if not text:
        return None
    from mezzo.resources.types import parse_duration

    try:
        return int(parse_duration(text) * 1_000_000)
    except ValueError:
        raise bad_request(f"{name} is a duration like 10ms or 1.5s", field=name) from None


@router.get("/api/traces", summary="Jaeger: search traces")
async def jaeger_search(request: Request, caller: Caller, service: str | None = None, operation: str | None = None,
                        tags: str | None = None, minDuration: str | None = None,
                        maxDuration: str | None = None, start: int | None = None, end: int | None = None,
                        limit: Annotated[int, Query(ge=1, le=1500)] = 20, lookback: str | None = None,
                        traceID: Annotated[list[str], Query()] = []) -> Response:  # noqa: B006
    require(caller, Verb.READ)
    store = _store(request)
    if traceID:
        ids = [_trace_id(t) for t in traceID]
    else:
        parsed: dict[str, str] = {}
        if tags:
            try:
                raw = orjson.loads(tags)
                parsed = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}
            except (orjson.JSONDecodeError, AttributeError):
                raise bad_request('tags is a JSON object, e.g. {"http.status_code":"500"}', field="tags") from None
        if start is None and lookback and lookback != "custom":
            start = int((time.time() - (_duration_us(lookback, "lookback") or 0) / 1e6) * 1_000_000)
        query = SpanQuery(service=service, operation=operation if operation not in (None, "", "all") else None,
                          tags=parsed, min_duration_us=_duration_us(minDuration, "minDuration"),
                          max_duration_us=_duration_us(maxDuration, "maxDuration"), start_us=start, end_us=end,
                          limit=limit)
        ids = await store.find(query)
    found = await store.traces(ids)
    return _json(_jaeger([jaeger_trace(t, spans) for t, spans in found.items() if spans]))


@router.get("/api/traces/{trace_id}", summary="Jaeger: one trace")
async def jaeger_trace_by_id(request: Request, trace_id: str, caller: Caller) -> Response:
    require(caller, Verb.READ)
    tid = _trace_id(trace_id)
    spans = await _store(request).trace(tid)
    if not spans:
        raise not_found(f"trace {trace_id}")
    return _json(_jaeger([jaeger_trace(tid, spans)]))


@router.get("/api/dependencies", summary="Jaeger: service dependencies")
async def jaeger_dependencies(request: Request, caller: Caller, endTs: int | None = None,
                              lookback: int = 86_400_000) -> dict[str, Any]:
    require(caller, Verb.READ)
    end_us = (endTs if endTs is not None else int(time.time() * 1000)) * 1000
    deps = await _store(request).dependencies(end_us - lookback * 1000, end_us)
    return _jaeger(deps)


# --- Mezzo's own ---------------------------------------------------------------------------

@router.get("/v1/traces/{trace_id}:critical-path", summary="The spans that set the trace's latency")
async def mezzo_critical_path(request: Request, trace_id: str, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    from mezzo.tracing.analysis import critical_path

    spans = await _store(request).trace(_trace_id(trace_id))
    if not spans:
        raise not_found(f"trace {trace_id}")
    return {"items": critical_path(spans)}


@router.get("/v1/traces/{trace_id}:export", summary="A trace as OTLP/JSON")
async def mezzo_export(request: Request, trace_id: str, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    spans = await _store(request).trace(_trace_id(trace_id))
    if not spans:
        raise not_found(f"trace {trace_id}")
    return otlp_json(spans)


@router.get("/v1/traces/{trace_id}", summary="A trace's summary, then its spans a page at a time")
async def mezzo_trace(request: Request, trace_id: str, caller: Caller, offset: Annotated[int, Query(ge=0)] = 0,
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
    require(caller, Verb.READ)
    tid = _trace_id(trace_id)
    store = _store(request)
    summary = await store.summary(tid)
    if summary is None:
        raise not_found(f"trace {trace_id}")
    spans = await store.trace(tid, offset, limit)
    return {**summary, "offset": offset, "items": [zipkin_span(s) | {"status": s.status, "kind": s.kind,
                                                                      "attributes": s.attributes} for s in spans],
            "next": offset + limit if offset + limit < summary["spans"] else None}


@router.get("/v1/traces", summary="Search traces by service, operation, any attribute, errors, duration, time")
async def mezzo_search(request: Request, caller: Caller, service: str | None = None, operation: str | None = None,
                       attr: Annotated[list[str], Query(description="KEY=VALUE, repeatable")] = [],  # noqa: B006
                       errors: bool = False, minDuration: str | None = None, maxDuration: str | None = None,
                       start: int | None = None, end: int | None = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
    require(caller, Verb.READ)
    tags = {}
    for item in attr:
        key, sep, value = item.partition("=")
        if not sep:
            raise bad_request(f"attr {item!r} is not KEY=VALUE", field="attr")
        tags[key] = value
    store = _store(request)
    ids = await store.find(SpanQuery(service, operation, tags, _duration_us(minDuration, "minDuration"),
                                     _duration_us(maxDuration, "maxDuration"), start, end, errors, limit))
    return {"items": [s for s in [await store.summary(t) for t in ids] if s]}


@router.get("/v1/tracing/compare", summary="Two traces side by side, per service and operation")
async def mezzo_compare(request: Request, caller: Caller, a: str, b: str) -> dict[str, Any]:
    require(caller, Verb.READ)
    from mezzo.tracing.analysis import compare

    store = _store(request)
    left, right = await store.trace(_trace_id(a, "a")), await store.trace(_trace_id(b, "b"))
    if not left or not right:
        raise not_found(f"trace {a if not left else b}")
    return compare(left, right)


@router.get("/v1/tracing/dependencies", summary="Service graph: calls, errors and p50/p95/p99 per edge")
async def mezzo_dependencies(request: Request, caller: Caller, window: str = "1h", end: int | None = None) -> dict[str, Any]:
    require(caller, Verb.READ)
    end_us = end if end is not None else int(time.time() * 1_000_000)
    span_us = _duration_us(window, "window") or 3_600_000_000
    return {"items": await _store(request).dependencies(end_us - span_us, end_us, latency=True)}


@router.get("/v1/tracing/red", summary="Rate, error ratio and p50/p95/p99 per service and operation")
async def mezzo_red(request: Request, caller: Caller, service: str | None = None, window: str = "5m",
                    end: int | None = None) -> dict[str, Any]:
    require(caller, Verb.READ)
    from mezzo.tracing.analytics import red_summary

    end_us = end if end is not None else int(time.time() * 1_000_000)
    span_us = _duration_us(window, "window") or 300_000_000
    rows = await _store(request).red(end_us - span_us, end_us, service)
    return {"window": window, "items": red_summary(rows, span_us / 1e6)}


# --- the dedicated ports: OTLP (:4318) and Zipkin (:9411) ------------------------------------

async def sampling_document(request: StarletteRequest) -> JSONResponse:
    """Jaeger's remote sampling protocol (what the OpenTelemetry Jaeger remote sampler polls)."""
    from mezzo.tracing.sampling import Strategies

    service = request.query_params.get("service")
    if not service:
        return JSONResponse({"error": "service is required"}, status_code=400)
    return JSONResponse(request.app.state.node.service(Strategies).document(service))


@router.get("/api/sampling", summary="Jaeger remote sampling document for a service")
async def sampling_on_api(request: Request, service: str) -> Any:
    from mezzo.tracing.sampling import Strategies

    return request.app.state.node.service(Strategies).document(service)


def otlp_app(node: Any) -> Starlette:
    app = Starlette(routes=[Route("/v1/traces", otlp_ingest, methods=["POST"]),
                            Route("/sampling", sampling_document), Route("/api/sampling", sampling_document)])
    app.state.node = node
    return app


async def zipkin_ingest(request: StarletteRequest) -> StarletteResponse:
    collector = _collector(request)
    try:
        await collector.zipkin(await _body(request, collector, "zipkin"), request.headers.get("content-type"),
                               request.headers.get("content-encoding"))
    except IngestError as exc:
        return _error_response(exc, "application/json")  # type: ignore[return-value]
    return StarletteResponse(status_code=202)


def _ms(request: StarletteRequest, name: str, default: int) -> int:
    value = request.query_params.get(name)
    return int(value) if value and value.isdigit() else default


async def zipkin_services(request: StarletteRequest) -> JSONResponse:
    return JSONResponse(await _store(request).services())


async def zipkin_spans(request: StarletteRequest) -> JSONResponse:
    """The span names of ``serviceName``; serviceName is required, as in Zipkin."""
    service = request.query_params.get("serviceName")
    if service is None:
        return JSONResponse({"error": "serviceName is required"}, status_code=400)
    return JSONResponse(sorted({n for n, _ in await _store(request).operations(service)}))


async def zipkin_remote_services(request: StarletteRequest) -> JSONResponse:
    """The services ``serviceName`` calls: the remoteEndpoint.serviceName (peer.service) of its spans,
    lowercase as Zipkin keeps names; serviceName is required, as in Zipkin (an empty one lists nothing)."""
    service = request.query_params.get("serviceName")
    if service is None:
        return JSONResponse({"error": "serviceName is required"}, status_code=400)
    names = await _store(request).remote_services(service) if service else []
    return JSONResponse(sorted({name.lower() for name in names}))


async def _peer_as_sent(store: TraceStore, service: str | None, remote: str) -> str:
    """The peer.service value a remoteServiceName (lowercase, from remoteServices) stands for: spans keep
    the name as it was sent, e.g. ``AuthTokenCache``."""
    if service and remote == remote.lower():
        sent = [name for name in await store.remote_services(service) if name.lower() == remote]
        if sent and remote not in sent:
            return sent[0]
    return remote


async def zipkin_traces(request: StarletteRequest) -> JSONResponse:
    q = request.query_params
    end_ms = _ms(request, "endTs", int(time.time() * 1000))
    lookback = _ms(request, "lookback", 86_400_000)
    # annotationQuery: "k=v" terms match tags; a bare word a tag key or an annotation (event) of the span
    tags: dict[str, str] = {}
    keys: list[str] = []
    for term in (q.get("annotationQuery") or "").split(" and "):
        key, sep, value = term.strip().partition("=")
        if key and sep:
            tags[key] = value
        elif key:
            keys.append(key)
    store = _store(request)
    if q.get("remoteServiceName"):  # Zipkin's remoteEndpoint.serviceName, kept as peer.service
        tags["peer.service"] = await _peer_as_sent(store, q.get("serviceName"), q["remoteServiceName"])
    query = SpanQuery(service=q.get("serviceName") or None, operation=q.get("spanName") or None, tags=tags, keys=keys,
                      min_duration_us=int(q["minDuration"]) if q.get("minDuration", "").isdigit() else None,
                      max_duration_us=int(q["maxDuration"]) if q.get("maxDuration", "").isdigit() else None,
                      start_us=(end_ms - lookback) * 1000, end_us=end_ms * 1000, limit=_ms(request, "limit", 10))
    found = await store.traces(await store.find(query))
    return JSONResponse([[zipkin_span(s) for s in spans] for spans in found.values() if spans])


async def zipkin_trace(request: StarletteRequest) -> JSONResponse:
    text = request.path_params["trace_id"].lower()
    if not text or len(text) > 32 or any(c not in "0123456789abcdef" for c in text):
        return JSONResponse({"error": "a trace id is up to 32 hex digits"}, status_code=400)
    spans = await _store(request).trace(text.rjust(32, "0"))
    if not spans:
        return JSONResponse({"error": f"trace {text} not found"}, status_code=404)
    return JSONResponse([zipkin_span(s) for s in spans])


async def zipkin_dependencies(request: StarletteRequest) -> JSONResponse:
    end_ms = _ms(request, "endTs", int(time.time() * 1000))
    lookback = _ms(request, "lookback", 86_400_000)
    deps = await _store(request).dependencies((end_ms - lookback) * 1000, end_ms * 1000)
    return JSONResponse(deps)


def zipkin_app(node: Any) -> Starlette:
    app = Starlette(routes=[
        Route("/api/v2/spans", zipkin_ingest, methods=["POST"]),
        Route("/api/v2/spans", zipkin_spans, methods=["GET"]),
        Route("/api/v2/services", zipkin_services),
        Route("/api/v2/remoteServices", zipkin_remote_services),
        Route("/api/v2/traces", zipkin_traces),
        Route("/api/v2/trace/{trace_id}", zipkin_trace),
        Route("/api/v2/dependencies", zipkin_dependencies),
    ])
    app.state.node = node
    return app
