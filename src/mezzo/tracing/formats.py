"""Spans in the shapes query clients expect: Jaeger's UI/Grafana JSON, Zipkin v2, and OTLP/JSON export."""

from __future__ import annotations

from typing import Any

import orjson

from mezzo.tracing.model import KIND_NAMES, STATUS_ERROR, Span, attribute_text

JAEGER_KIND = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
ZIPKIN_KIND = {2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, list | dict):  # as Jaeger's own OTLP translation writes lists and maps
        return {"key": key, "type": "string", "value": orjson.dumps(value).decode()}
    return {"key": key, "type": "string", "value": value if isinstance(value, str) else str(value)}


def jaeger_trace(trace_id: str, spans: list[Span]) -> dict[str, Any]:
    processes: dict[tuple[str, str], str] = {}
    out_processes: dict[str, Any] = {}
    out_spans = []
    for span in spans:
        resource_key = (span.service, repr(sorted(span.resource.items())))
        pid = processes.get(resource_key)
        if pid is None:
            pid = processes[resource_key] = f"p{len(processes) + 1}"
            out_processes[pid] = {"serviceName": span.service,
                                  "tags": [_tag(k, v) for k, v in span.resource.items() if k != "service.name"]}
        tags = [_tag(k, v) for k, v in span.attributes.items()]
        if span.kind in JAEGER_KIND:
            tags.append(_tag("span.kind", JAEGER_KIND[span.kind]))
        if span.status == STATUS_ERROR:
            tags.append(_tag("error", True))
            if span.status_message:
                tags.append(_tag("otel.status_description", span.status_message))
        if span.scope:
            tags.append(_tag("otel.scope.name", span.scope))
        refs = [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": span.parent_id}] if span.parent_id else []
        refs += [{"refType": "FOLLOWS_FROM", "traceID": link["traceId"], "spanID": link["spanId"]}
                 for link in span.links]
        out_spans.append({
            "traceID": trace_id, "spanID": span.span_id, "operationName": span.name, "references": refs,
            "startTime": span.start_us, "duration": span.duration_us, "tags": tags, "flags": 1,
            "logs": [{"timestamp": e["timeUs"], "fields": [_tag("event", e["name"])] +
                      [_tag(k, v) for k, v in e.get("attributes", {}).items()]} for e in span.events],
            "processID": pid, "warnings": None})
    return {"traceID": trace_id, "spans": out_spans, "processes": out_processes, "warnings": None}


def zipkin_span(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": span.trace_id, "id": span.span_id, "name": span.name,
                           "timestamp": span.start_us, "duration": span.duration_us,
                           "localEndpoint": {"serviceName": span.service}}
    if span.parent_id:
        out["parentId"] = span.parent_id
    if span.kind in ZIPKIN_KIND:
        out["kind"] = ZIPKIN_KIND[span.kind]
    # Zipkin tags are text: booleans true/false, lists and maps JSON (as search compares them)
    tags = {k: attribute_text(v) or "" for k, v in span.attributes.items()}
    if span.status == STATUS_ERROR:
        tags.setdefault("error", span.status_message or "true")
    if tags:
        out["tags"] = tags
    if span.events:
        out["annotations"] = [{"timestamp": e["timeUs"], "value": e["name"]} for e in span.events]
    peer = span.attributes.get("peer.service")
    if peer:
        out["remoteEndpoint"] = {"serviceName": peer}
    return out


def _any(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_any(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": _any(v)} for k, v in value.items()]}}
    return {"stringValue": "" if value is None else str(value)}


def _otlp_attributes(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any(v)} for k, v in attributes.items()]


def _otlp_span(s: Span) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": s.trace_id, "spanId": s.span_id, "parentSpanId": s.parent_id, "name": s.name, "kind": s.kind,
        "startTimeUnixNano": str(s.start_us * 1000), "endTimeUnixNano": str((s.start_us + s.duration_us) * 1000),
        "attributes": _otlp_attributes(s.attributes),
        "events": [{"timeUnixNano": str(e["timeUs"] * 1000), "name": e["name"],
                    "attributes": _otlp_attributes(e.get("attributes", {}))} for e in s.events],
        "links": [{"traceId": link["traceId"], "spanId": link["spanId"],
                   **({"traceState": link["traceState"]} if link.get("traceState") else {}),
                   "attributes": _otlp_attributes(link.get("attributes", {}))} for link in s.links],
        "status": {"code": s.status, "message": s.status_message}}
    if s.trace_state:
        out["traceState"] = s.trace_state
    return out


def otlp_json(spans: list[Span]) -> dict[str, Any]:
    """A trace as an OTLP/JSON ExportTraceServiceRequest (what OTLP receivers take back): spans grouped
    by resource, then by instrumentation scope, as they came."""
    groups: dict[str, tuple[dict[str, Any], dict[str, list[Span]]]] = {}
    for span in spans:
        _, scopes = groups.setdefault(repr(sorted(span.resource.items())), (span.resource, {}))
        scopes.setdefault(span.scope, []).append(span)
    return {"resourceSpans": [
        {"resource": {"attributes": _otlp_attributes(resource)},
         "scopeSpans": [{"scope": {"name": scope}, "spans": [_otlp_span(s) for s in members]}
                        for scope, members in scopes.items()]}
        for resource, scopes in groups.values()]}


def kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, "unspecified")
