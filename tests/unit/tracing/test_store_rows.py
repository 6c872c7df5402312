"""The trace store's row format (OTLP spans kept as their protobuf message), its writer and its search."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

from mezzo.tracing import store as store_module
from mezzo.tracing.model import Span, SpanError, from_otlp_proto
from mezzo.tracing.store import SCHEMA, Busy, Query, TraceStore, encode_rows, insert_rows

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")


def kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]


def request(*spans: SpanMessage, service: str = "shop") -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", string_value=service))
    ss = rs.scope_spans.add()
    ss.scope.name = "test"
    ss.spans.extend(spans)
    return req.SerializeToString()


def message(span_id: int, name: str = "GET /a", start_ms: int = 1000, parent: int = 0, **attrs: object) -> SpanMessage:
    span = SpanMessage(trace_id=TRACE, span_id=span_id.to_bytes(8, "big"), name=name, kind=2,
                       start_time_unix_nano=start_ms * 1_000_000, end_time_unix_nano=(start_ms + 5) * 1_000_000)
    if parent:
        span.parent_span_id = parent.to_bytes(8, "big")
    for key, value in attrs.items():
        if isinstance(value, bool):
            span.attributes.append(kv(key, bool_value=value))
        elif isinstance(value, int):
            span.attributes.append(kv(key, int_value=value))
        else:
            span.attributes.append(kv(key, string_value=str(value)))
    return span


def test_otlp_span_keeps_its_message_and_decodes_on_read() -> None:
    span = message(1, tenant="acme", code=500, ok=True)
    event = span.events.add(time_unix_nano=1_002_000_000, name="retry")
    event.attributes.append(kv("attempt", int_value=2))
    link = span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    link.attributes.append(kv("why", array_value=ArrayValue(values=[AnyValue(string_value="x")])))
    [decoded] = from_otlp_proto(request(span))
    assert decoded.raw and (decoded.service, decoded.name, decoded.kind, decoded.parent_id) == ("shop", "GET /a", 2, "")
    assert decoded.duration_us == 5000 and decoded.start_us == 1_000_000
    row = decoded.row()
    assert isinstance(row[10], bytes)  # the message, not JSON
    again = Span.from_row(row)
    assert again.attributes == {"tenant": "acme", "code": 500, "ok": True}
    assert again.events == [{"timeUs": 1_002_000, "name": "retry", "attributes": {"attempt": 2}}]
    assert again.links == [{"traceId": "01" * 16, "spanId": "02" * 8, "attributes": {"why": ["x"]}}]
    assert again.resource == {"service.name": "shop"} and again.scope == "test"


def test_json_rows_still_read_and_spans_without_raw_are_plain() -> None:
    span = Span("a" * 32, "b" * 16, "", "svc", "op", 1, 10, 2, attributes={"k": 1}, events=[], links=[])
    row = span.row()
    assert row[10] == '{"k":1}'
    assert Span.from_row(row).attributes == {"k": 1}
    assert Span("a" * 32, "b" * 16, "", "svc", "op", 1, 10, 2).attributes == {}


def test_bad_ids_are_refused_with_the_field() -> None:
    with pytest.raises(SpanError) as bad:
        from_otlp_proto(request(SpanMessage(trace_id=bytes(16), span_id=b"\x01" * 8)))
    assert bad.value.field == "traceId"
    with pytest.raises(SpanError) as bad:
        from_otlp_proto(request(SpanMessage(trace_id=TRACE, span_id=b"\x01" * 3)))
    assert bad.value.field == "spanId"


def test_insert_rows_spans_many_statements(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.executescript(SCHEMA)
    spans = from_otlp_proto(request(*(message(i + 1) for i in range(store_module.ROWS_PER_INSERT * 2 + 3))))
    insert_rows(conn, encode_rows(spans))
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT span_id) FROM spans").fetchone() == (515, 515)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "spans_operation_start" not in indexes and {"spans_trace", "spans_service_start"} <= indexes


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = TraceStore(tmp_path / "traces.db")
    await opened.open()
    yield opened
    await opened.close()


def one(trace: int, span: int, start_ms: int, name: str = "GET /a", service: str = "shop", **attrs: object) -> bytes:
    msg = message(span, name, start_ms, **attrs)
    msg.trace_id = trace.to_bytes(16, "big")
    return request(msg, service=service)


async def test_find_is_newest_first_by_matching_span_and_stops_at_limit(store: TraceStore) -> None:
    # trace 1: spans at 10 and 50 s; trace 2 at 30 s; trace 3 at 40 s with another operation
    for body in (one(1, 1, 10_000), one(1, 2, 50_000, name="GET /b"), one(2, 3, 30_000, tier="pro"),
                 one(3, 4, 40_000, name="POST /c", code=500), one(4, 5, 20_000, service="db")):
        await store.write(from_otlp_proto(body))
    t = [f"{i:032x}" for i in range(5)]
    assert await store.find(Query(service="shop")) == [t[1], t[3], t[2]]
    assert await store.find(Query(service="shop", limit=2)) == [t[1], t[3]]
    assert await store.find(Query(service="shop", operation="GET /a")) == [t[2], t[1]]  # trace 1 by its 10 s span
    assert await store.find(Query(tags={"tier": "pro"})) == [t[2]]
    assert await store.find(Query(tags={"code": "500"})) == [t[3]]
    assert await store.find(Query(tags={"service.name": "db"})) == [t[4]]  # resource attributes too
    assert await store.find(Query(start_us=25_000_000, end_us=45_000_000)) == [t[3], t[2]]
    assert [s.name for s in await store.trace(t[1])] == ["GET /a", "GET /b"]
    assert await store.services() == ["db", "shop"]


async def test_bool_attributes_match_as_true_false(store: TraceStore) -> None:
    await store.write(from_otlp_proto(one(9, 1, 1000, cached=True)))
    assert await store.find(Query(tags={"cached": "true"})) == [f"{9:032x}"]
    assert await store.find(Query(tags={"cached": "false"})) == []
    # JSON rows (Zipkin, OTLP/JSON): a key orjson escapes is still found
    await store.write([Span("b" * 32, "c" * 16, "", "zipkin", "get", 2, 5, 1, attributes={'we"ird': "x", "n": 3})])
    assert await store.find(Query(tags={'we"ird': "x"})) == ["b" * 32]
    assert await store.find(Query(tags={"n": "3"})) == ["b" * 32]


async def test_a_new_store_uses_large_pages(store: TraceStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == store_module.PAGE_SIZE
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_writer_behind_answers_busy(store: TraceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_PENDING", 1)
    with pytest.raises(Busy):
        await store.write(from_otlp_proto(request(message(1), message(2))))
    assert store.pending == 0


async def test_a_failed_commit_is_a_retryable_503(store: TraceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.rpc import status_pb2  # type: ignore[import-untyped]

    from mezzo.tracing.collector import PROTOBUF, Collector, IngestError

    def broken(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_module, "insert_rows", broken)
    with pytest.raises(IngestError) as refused:
        await Collector(store).otlp(request(message(1)), PROTOBUF, None)
    assert refused.value.status == 503 and refused.value.retry_after
    body, media = refused.value.body(PROTOBUF)
    assert media == PROTOBUF and status_pb2.Status.FromString(body).code == 14
    assert store.pending == 0
    monkeypatch.undo()
    await Collector(store).otlp(request(message(1)), PROTOBUF, None)  # the writer carries on
    assert len(await store.trace(TRACE.hex())) == 1


async def test_checkpoints_run_beside_the_writer(store: TraceStore) -> None:
    """The WAL is copied into the database by the checkpoint thread, long before the writer's backstop."""
    from mezzo.testing.fixtures import wait_for

    before = store.path.stat().st_size
    spans = from_otlp_proto(request(*(message(i + 1, tenant="x" * 200) for i in range(3000))))
    await store.write(spans)
    assert (store.path.with_name(store.path.name + "-wal")).stat().st_size > 1_000_000
    await wait_for(lambda: store.path.stat().st_size > before + 1_000_000)


def test_numbers_the_store_cannot_hold_are_refused_with_the_field() -> None:
    from mezzo.tracing.model import from_otlp_json, from_zipkin

    def otlp(span: dict[str, object]) -> bytes:
        base = {"traceId": TRACE.hex(), "spanId": "00f067aa0ba902b7", "name": "x",
                "startTimeUnixNano": "1000", "endTimeUnixNano": "2000"}
        return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{**base, **span}]}]}]})

    with pytest.raises(SpanError, match="intValue"):
        from_otlp_json(otlp({"attributes": [{"key": "n", "value": {"intValue": str(1 << 70)}}]}))
    with pytest.raises(SpanError, match="startTimeUnixNano"):
        from_otlp_json(otlp({"startTimeUnixNano": str(1 << 64)}))
    with pytest.raises(SpanError, match="endTimeUnixNano"):
        from_otlp_json(otlp({"endTimeUnixNano": "-5"}))
    zipkin = {"traceId": TRACE.hex(), "id": "00f067aa0ba902b7", "name": "x"}
    with pytest.raises(SpanError, match=r"\[0\]\.timestamp"):
        from_zipkin(orjson.dumps([{**zipkin, "timestamp": 1e19}]))
    with pytest.raises(SpanError, match=r"\[0\]\.duration"):
        from_zipkin(orjson.dumps([{**zipkin, "timestamp": 5, "duration": "abc"}]))


async def test_spans_that_cannot_be_encoded_hold_no_reservation(store: TraceStore) -> None:
    bad = Span(TRACE.hex(), "00f067aa0ba902b7", "", "shop", "x", 1, 1, 1, attributes={"x": {1, 2}})
    with pytest.raises(TypeError):
        await store.write([bad])
    assert store.pending == 0


async def test_the_writer_survives_a_row_it_cannot_insert(store: TraceStore) -> None:
    from mezzo.tracing.store import StoreFailed

    huge = Span(TRACE.hex(), "00f067aa0ba902b7", "", "shop", "x", 1, 1 << 64, 1, attributes={})
    with pytest.raises(StoreFailed):
        await store.write([huge])  # sqlite3 raises OverflowError, not sqlite3.Error
    await store.write(from_otlp_proto(request(message(1))))  # the writer carries on
    assert len(await store.trace(TRACE.hex())) == 1 and store.pending == 0


def test_peer_service_is_read_from_the_message_bytes_as_a_full_decode_would() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValueList

    from mezzo.tracing.model import raw_attribute
    from mezzo.tracing.store import raw_peer_service, remote_pairs

    def with_event(span: SpanMessage, **attrs: str) -> SpanMessage:
        event = span.events.add(time_unix_nano=1, name="e")
        for key, value in attrs.items():
            event.attributes.append(kv(key, string_value=value))
        return span

    nested = message(1)
    nested.attributes.append(kv("x", kvlist_value=KeyValueList(values=[kv("peer.service", string_value="in")])))
    cases = {
        "usual": message(1, tenant="acme", **{"peer.service": "AuthTokenCache"}, code=5),
        "absent": message(1, tenant="acme"),
        "only an event's": with_event(message(1), **{"peer.service": "ev"}),
        "an event's and the span's": with_event(message(1, **{"peer.service": "span"}), **{"peer.service": "ev"}),
        "long": message(1, **{"peer.service": "p" * 300}),
        "not ascii": message(1, **{"peer.service": "café-☕"}),
        "a number": message(1, **{"peer.service": 7}),
        "empty": message(1, **{"peer.service": ""}),
        "a longer key": message(1, **{"peer.service.x": "no"}),
        "nested": nested,
    }
    for name, span in cases.items():
        [decoded] = from_otlp_proto(request(span))
        assert raw_peer_service(decoded.raw) == raw_attribute(decoded.raw, "peer.service"), name
    [usual] = from_otlp_proto(request(cases["usual"]))
    assert raw_peer_service(usual.raw) == "AuthTokenCache"
    zipkin = Span("a" * 32, "b" * 16, "", "web", "get", 3, 10, 2, attributes={"peer.service": "api"})
    later = Span("a" * 32, "c" * 16, "", "web", "get", 3, 20, 2, attributes={"peer.service": "api"})
    assert remote_pairs([usual, zipkin, later]) == {("shop", "AuthTokenCache"): 1_000_000, ("web", "api"): 20}
