"""The span as Mezzo stores it, and decoders from OTLP (protobuf and JSON) and Zipkin v2 JSON."""

from __future__ import annotations

import base64
from typing import Any

import orjson

KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
ZIPKIN_KINDS = {"SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


class SpanError(ValueError):
    """A span that cannot be stored, with where in the request it is."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class Span:
    """One span. From OTLP/protobuf, ``raw`` keeps the span's own message and its attributes, events and
    links are decoded from it only when something reads them: ingest stores the bytes as they came
    (decoding 20 attributes into Python costs more than the whole insert), reads decode them."""

    __slots__ = ("_attributes", "_events", "_links", "duration_us", "kind", "name", "parent_id", "raw", "resource",
                 "scope", "service", "span_id", "start_us", "status", "status_message", "trace_id", "trace_state")

    def __init__(self, trace_id: str, span_id: str, parent_id: str, service: str, name: str, kind: int,
                 start_us: int, duration_us: int, status: int = STATUS_UNSET, status_message: str = "",
                 attributes: dict[str, Any] | None = None, resource: dict[str, Any] | None = None,
                 events: list[dict[str, Any]] | None = None, links: list[dict[str, Any]] | None = None,
                 scope: str = "", trace_state: str = "", raw: bytes = b"") -> None:
        self.trace_id = trace_id  # 32 lowercase hex
        self.span_id = span_id  # 16 lowercase hex
        self.parent_id = parent_id  # "" for a root
        self.service, self.name, self.kind = service, name, kind
        self.start_us, self.duration_us = start_us, duration_us
        self.status, self.status_message = status, status_message
        self.resource = resource if resource is not None else {}
        self.scope, self.trace_state = scope, trace_state
        self.raw = raw  # an OTLP Span message: the source of attributes, events and links when given
        self._attributes = attributes if attributes is not None or raw else {}
        self._events = events if events is not None or raw else []  # {timeUs, name, attributes}
        self._links = links if links is not None or raw else []  # {traceId, spanId, attributes}

    def _decode(self) -> None:
        self._attributes, self._events, self._links = decode_raw(self.raw)

    @property
    def attributes(self) -> dict[str, Any]:
        if self._attributes is None:
            self._decode()
        return self._attributes  # type: ignore[return-value]

    @property
    def events(self) -> list[dict[str, Any]]:
        if self._events is None:
            self._decode()
        return self._events  # type: ignore[return-value]

    @property
    def links(self) -> list[dict[str, Any]]:
        if self._links is None:
            self._decode()
        return self._links  # type: ignore[return-value]

    def row(self, resource_json: str | None = None) -> tuple[Any, ...]:
        """The stored row: OTLP spans keep their message (a BLOB in ``attributes``), others JSON text."""
        resource = resource_json if resource_json is not None else orjson.dumps(self.resource).decode()
        if self.raw:
            return (self.trace_id, self.span_id, self.parent_id, self.service, self.name, self.kind, self.start_us,
                    self.duration_us, self.status, self.status_message, self.raw, resource, "", "", self.scope,
                    self.trace_state)
        return (self.trace_id, self.span_id, self.parent_id, self.service, self.name, self.kind, self.start_us,
                self.duration_us, self.status, self.status_message, orjson.dumps(self.attributes).decode(),
                resource, orjson.dumps(self.events).decode() if self.events else "",
                orjson.dumps(self.links).decode() if self.links else "", self.scope, self.trace_state)

    @classmethod
    def from_row(cls, row: Any) -> Span:
        attributes = row[10]
        if isinstance(attributes, bytes):
            return cls(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], None,
                       orjson.loads(row[11]), None, None, row[14], row[15], attributes)
        return cls(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                   orjson.loads(attributes), orjson.loads(row[11]), orjson.loads(row[12]) if row[12] else [],
                   orjson.loads(row[13]) if row[13] else [], row[14], row[15])

    @property
    def error(self) -> bool:
        return self.status == STATUS_ERROR

    def __repr__(self) -> str:
        return f"Span({self.trace_id}/{self.span_id} {self.service} {self.name!r})"


COLUMNS = ("trace_id", "span_id", "parent_id", "service", "name", "kind", "start_us", "duration_us", "status",
           "status_message", "attributes", "resource", "events", "links", "scope", "trace_state")


def _hex(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size or raw == bytes(size):
        raise SpanError(f"{what} must be {size} bytes and not all zero", what)
    return raw.hex()


def _hex_text(text: Any, size: int, what: str) -> str:
    """OTLP/JSON ids are hex (not base64, unlike proto3's JSON mapping); accept base64 too, as some SDKs sent it."""
    if not isinstance(text, str):
        raise SpanError(f"{what} must be a string", what)
    lowered = text.lower()
    if len(lowered) == size * 2 and all(c in "0123456789abcdef" for c in lowered):
        if lowered == "0" * (size * 2):
            raise SpanError(f"{what} must not be all zero", what)
        return lowered
    try:
        return _hex(base64.b64decode(text, validate=True), size, what)
    except ValueError:
        raise SpanError(f"{what} must be {size * 2} hex digits", what) from None


# --- OTLP protobuf ---------------------------------------------------------------------------

def _any_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _attrs(kvs: Any) -> dict[str, Any]:
    """Attributes as a dict; the scalar case inline, since it is nearly every attribute of every span."""
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.value
        which = value.WhichOneof("value")
        out[kv.key] = getattr(value, which) if which in _SCALARS else _any_value(value)
    return out


def _events(events: Any) -> list[dict[str, Any]]:
    return [{"timeUs": e.time_unix_nano // 1000, "name": e.name, "attributes": _attrs(e.attributes)} for e in events]


def _links(links: Any) -> list[dict[str, Any]]:
    return [{"traceId": link.trace_id.hex(), "spanId": link.span_id.hex(), "attributes": _attrs(link.attributes)}
            | ({"traceState": link.trace_state} if link.trace_state else {}) for link in links]


def decode_raw(raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Attributes, events and links of a stored OTLP Span message."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

    message = SpanMessage()
    message.ParseFromString(raw)
    return _attrs(message.attributes), _events(message.events), _links(message.links)


def raw_attribute(raw: bytes, key: str) -> str | None:
    """One attribute of a stored OTLP Span message as text (booleans ``true``/``false``), for attribute search."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

    message = SpanMessage()
    message.ParseFromString(raw)
    for kv in message.attributes:
        if kv.key == key:
            return attribute_text(_any_value(kv.value))
    return None


def raw_has_key(raw: bytes, key: str) -> bool:
    """Whether a stored OTLP Span message has an attribute ``key`` or an event named ``key``."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

    message = SpanMessage()
    message.ParseFromString(raw)
    return any(kv.key == key for kv in message.attributes) or any(e.name == key for e in message.events)


def attribute_text(value: Any) -> str | None:
    """An attribute value as search compares it: strings as they are, booleans ``true``/``false``, the
    rest as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()


def from_otlp_proto(body: bytes) -> list[Span]:
    """Spans of an ExportTraceServiceRequest; each keeps its message in ``raw`` (see ``Span``)."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise SpanError(f"not an OTLP ExportTraceServiceRequest: {exc}", "body") from None
    spans = []
    append = spans.append
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for s in ss.spans:
                trace_id, span_id = s.trace_id, s.span_id
                if len(trace_id) != 16 or trace_id == ZERO_TRACE:
                    raise SpanError("traceId must be 16 bytes and not all zero", "traceId")
                if len(span_id) != 8 or span_id == ZERO_SPAN:
                    raise SpanError("spanId must be 8 bytes and not all zero", "spanId")
                start, end = s.start_time_unix_nano // 1000, s.end_time_unix_nano // 1000
                status = s.status
                append(Span(trace_id.hex(), span_id.hex(), s.parent_span_id.hex(), service, s.name, s.kind, start,
                            end - start if end > start else 0, status.code, status.message, None, resource, None,
                            None, scope, s.trace_state, s.SerializeToString()))
    return spans


ZERO_TRACE, ZERO_SPAN = bytes(16), bytes(8)


# --- OTLP JSON -------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
KIND_VALUES = {"SPAN_KIND_" + name.upper(): kind for kind, name in KIND_NAMES.items()}
STATUS_VALUES = {"STATUS_CODE_UNSET": STATUS_UNSET, "STATUS_CODE_OK": STATUS_OK, "STATUS_CODE_ERROR": STATUS_ERROR}


def _int64(value: Any, what: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """``value`` as an integer the store can hold (SQLite and PostgreSQL integers are 64-bit)."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise SpanError(f"{what} must be an integer, not {str(value)[:40]!r}", what) from None
    if not low <= number <= high:
        raise SpanError(f"{what} is out of range ({low} to {high})", what)
    return number


def _enum(value: Any, names: dict[str, int], what: str) -> int:
    """An OTLP/JSON enum: its name, or its number (proto3 enums are int32; unknown numbers are kept)."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return names.get(value, 0)
    return _int64(value, what, INT32_MIN, INT32_MAX)


def _json_value(value: dict[str, Any]) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    (which, inner), = value.items()
    if which == "arrayValue":
        return [_json_value(v) for v in (inner or {}).get("values", [])]
    if which == "kvlistValue":
        return {str(kv["key"]): _json_value(kv.get("value", {})) for kv in (inner or {}).get("values", [])}
    if which == "intValue":
        return _int64(inner, "intValue")
    if which == "doubleValue":
        return float(inner)
    return inner


def _json_attrs(items: Any) -> dict[str, Any]:
    return {str(kv["key"]): _json_value(kv.get("value", {})) for kv in items or []}


def _json_link(link: dict[str, Any]) -> dict[str, Any]:
    out = {"traceId": _hex_text(link.get("traceId"), 16, "links.traceId"),
           "spanId": _hex_text(link.get("spanId"), 8, "links.spanId"),
           "attributes": _json_attrs(link.get("attributes"))}
    if link.get("traceState"):
        out["traceState"] = str(link["traceState"])
    return out


def from_otlp_json(body: bytes) -> list[Span]:
    try:
        doc = orjson.loads(body)
        spans = []
        for rs in doc.get("resourceSpans", []):
            resource = _json_attrs(rs.get("resource", {}).get("attributes"))
            service = str(resource.get("service.name") or "unknown_service")
            for ss in rs.get("scopeSpans", rs.get("instrumentationLibrarySpans", [])):
                scope = (ss.get("scope") or ss.get("instrumentationLibrary") or {}).get("name", "")
                for s in ss.get("spans", []):
                    start = _int64(s.get("startTimeUnixNano", 0), "startTimeUnixNano", 0) // 1000
                    end = _int64(s.get("endTimeUnixNano", 0), "endTimeUnixNano", 0) // 1000
                    kind = _enum(s.get("kind", 0), KIND_VALUES, "kind")
                    status = s.get("status") or {}
                    code = _enum(status.get("code", 0), STATUS_VALUES, "status.code")
                    parent = s.get("parentSpanId") or ""
                    spans.append(Span(
                        _hex_text(s.get("traceId"), 16, "traceId"), _hex_text(s.get("spanId"), 8, "spanId"),
                        _hex_text(parent, 8, "parentSpanId") if parent else "", service, str(s.get("name", "")),
                        kind, start, max(end - start, 0), code, str(status.get("message", "")),
                        _json_attrs(s.get("attributes")), resource,
                        [{"timeUs": _int64(e.get("timeUnixNano", 0), "timeUnixNano", 0) // 1000,
                          "name": e.get("name", ""),
                          "attributes": _json_attrs(e.get("attributes"))} for e in s.get("events", [])],
                        [_json_link(link) for link in s.get("links", [])],
                        scope, str(s.get("traceState", ""))))
        return spans
    except SpanError:
        raise
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, KeyError) as exc:
        raise SpanError(f"not OTLP/JSON: {type(exc).__name__}: {exc}", "body") from None


# --- Zipkin v2 -------------------------------------------------------------------------------

def _zipkin_object(z: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = z.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpanError(f"{where}.{key} must be an object", f"{where}.{key}")
    return value


def _zipkin_id(value: Any, size: int, field: str, label: str) -> str:
    """A Zipkin id: up to ``size`` hex digits (shorter ones are left-padded), not all zero."""
    text = str(value).lower().rjust(size, "0")
    if len(text) != size or not all(c in "0123456789abcdef" for c in text) or text == "0" * size:
        raise SpanError(f"{label} must be {size} hex digits, not all zero", field)
    return text


def _zipkin_parent(value: Any, span_id: str, field: str, label: str) -> str:
    """As Zipkin reads it: absent, all zeros or the span's own id is no parent (a root)."""
    if not value or not str(value).strip("0"):
        return ""
    parent = str(value).lower().rjust(16, "0")
    if len(parent) != 16 or not all(c in "0123456789abcdef" for c in parent):
        raise SpanError(f"{label} must be 16 hex digits", field)
    return "" if parent == span_id else parent


def _zipkin_annotations(z: dict[str, Any], where: str) -> list[dict[str, Any]]:
    items = z.get("annotations") or []
    if not isinstance(items, list):
        raise SpanError(f"{where}.annotations must be a list", f"{where}.annotations")
    out = []
    for j, a in enumerate(items):
        if not isinstance(a, dict):
            raise SpanError(f"{where}.annotations[{j}] must be an object", f"{where}.annotations[{j}]")
        out.append({"timeUs": _int64(a.get("timestamp", 0), f"{where}.annotations.timestamp", 0),
                    "name": str(a.get("value", "")), "attributes": {}})
    return out


def from_zipkin(body: bytes) -> list[Span]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SpanError(f"not JSON: {exc}", "body") from None
    if not isinstance(items, list):
        raise SpanError("Zipkin v2 expects a JSON list of spans", "body")
    spans = []
    for i, z in enumerate(items):
        where = f"[{i}]"
        if not isinstance(z, dict):
            raise SpanError(f"span {i} is not an object", where)
        trace_id = str(z.get("traceId", "")).lower().rjust(32, "0")
        if len(trace_id) != 32 or not all(c in "0123456789abcdef" for c in trace_id) or trace_id == "0" * 32:
            raise SpanError(f"span {i}: traceId must be 16 or 32 hex digits", f"{where}.traceId")
        span_id = _zipkin_id(z.get("id", ""), 16, f"{where}.id", f"span {i}: id")
        parent_id = _zipkin_parent(z.get("parentId"), span_id, f"{where}.parentId", f"span {i}: parentId")
        local = _zipkin_object(z, "localEndpoint", where)
        remote = _zipkin_object(z, "remoteEndpoint", where)
        tags = {str(k): str(v) for k, v in _zipkin_object(z, "tags", where).items()}
        if remote.get("serviceName"):
            tags.setdefault("peer.service", str(remote["serviceName"]))
        error = "error" in tags
        service = str(local.get("serviceName") or "unknown")
        spans.append(Span(
            trace_id, span_id, parent_id, service, str(z.get("name") or ""),
            ZIPKIN_KINDS.get(str(z.get("kind", "")).upper(), 1),
            _int64(z.get("timestamp") or 0, f"{where}.timestamp", 0), _int64(z.get("duration") or 0, f"{where}.duration", 0),
            STATUS_ERROR if error else STATUS_UNSET,
            tags.get("error", "") if error else "", tags, {"service.name": service},
            _zipkin_annotations(z, where)))
    return spans
