"""Audit: OTLP ingest as the official exporter uses it (gzip and deflate, the OTLP port and the API port
with a token, a 429 retried), gzip bodies the way RFC 1952 defines them, the size limit enforced before
a body is read, bad OTLP/JSON refused with a 400, and an export that gives back the whole trace."""

from __future__ import annotations

import asyncio
import gzip
import socket
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from integration.test_tracing import otlp_doc, span, tr  # noqa: F401  (the tr fixture)
from mezzo.testing.fixtures import RunningNode
from mezzo.tracing import collector as collector_module
from mezzo.tracing.store import Busy, TraceStore

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}


def finished_spans(service: str, name: str) -> tuple[list[ReadableSpan], str]:
    """Spans made by the OpenTelemetry SDK (a root with a child), and their trace id."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("audit")
    with tracer.start_as_current_span(name, attributes={"tenant": "acme", "retries": 3}) as root:
        with tracer.start_as_current_span("child"):
            pass
    return list(memory.get_finished_spans()), format(root.get_span_context().trace_id, "032x")


async def export(exporter: OTLPSpanExporter, spans: list[ReadableSpan]) -> SpanExportResult:
    try:
        return await asyncio.to_thread(exporter.export, spans)
    finally:
        await asyncio.to_thread(exporter.shutdown)


async def test_the_exporter_compressed_and_on_the_api_port(tr: RunningNode) -> None:  # noqa: F811
    store = tr.node.service(TraceStore)
    otlp = tr.node.url("otlp") + "/v1/traces"
    api = tr.url + "/v1/traces"
    bearer = {"Authorization": f"Bearer {tr.token}"}
    cases = {"gzip": OTLPSpanExporter(endpoint=otlp, compression=Compression.Gzip),
             "deflate": OTLPSpanExporter(endpoint=otlp, compression=Compression.Deflate),
             "api": OTLPSpanExporter(endpoint=api, headers=bearer, compression=Compression.Gzip)}
    for name, exporter in cases.items():
        spans, trace_id = finished_spans(f"svc-{name}", f"op-{name}")
        assert await export(exporter, spans) == SpanExportResult.SUCCESS, name
        stored = await store.trace(trace_id)
        assert sorted(s.name for s in stored) == ["child", f"op-{name}"], name
        root = next(s for s in stored if not s.parent_id)
        assert root.service == f"svc-{name}" and root.attributes == {"tenant": "acme", "retries": 3}
    spans, trace_id = finished_spans("svc-anonymous", "op")  # the API port wants a token
    assert await export(OTLPSpanExporter(endpoint=api), spans) == SpanExportResult.FAILURE
    assert await store.trace(trace_id) == []


async def test_the_exporter_retries_a_429_and_its_spans_arrive_once(tr: RunningNode,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = tr.node.service(TraceStore)
    write = store.write
    refused: list[int] = []

    async def behind_once(spans: list[Any]) -> None:
        if not refused:
            refused.append(len(spans))
            raise Busy("the writer is behind")
        await write(spans)

    monkeypatch.setattr(store, "write", behind_once)
    spans, trace_id = finished_spans("patient", "op")
    exporter = OTLPSpanExporter(endpoint=tr.node.url("otlp") + "/v1/traces")
    assert await export(exporter, spans) == SpanExportResult.SUCCESS  # after Retry-After: 1
    assert refused == [2] and len(await store.trace(trace_id)) == 2


def request(trace: bytes, span_id: int) -> bytes:
    message = ExportTraceServiceRequest()
    resource_spans = message.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="gz")))
    resource_spans.scope_spans.add().spans.add(trace_id=trace, span_id=span_id.to_bytes(8, "big"), name="op",
                                               start_time_unix_nano=1_000_000, end_time_unix_nano=2_000_000)
    return message.SerializeToString()


async def test_gzip_bodies_are_read_whole_or_refused(tr: RunningNode) -> None:  # noqa: F811
    """RFC 1952: a gzip file is a series of members, each ending in a CRC-32 and length trailer. Two
    members are one body (two serialised requests are one request with both); a member cut short or
    followed by garbage is not gzip, and a 200 for it would lose or invent spans."""
    store = tr.node.service(TraceStore)
    one, two = b"\x11" * 16, b"\x22" * 16
    gz = {**PROTOBUF, "content-encoding": "gzip"}
    async with httpx.AsyncClient(base_url=tr.node.url("otlp")) as http:
        both = gzip.compress(request(one, 1)) + gzip.compress(request(two, 2))
        assert (await http.post("/v1/traces", content=both, headers=gz)).status_code == 200
        assert len(await store.trace(one.hex())) == 1 and len(await store.trace(two.hex())) == 1
        whole = gzip.compress(request(b"\x33" * 16, 3))
        for name, body in {"no trailer": whole[:-8], "garbage after": whole + b"garbage"}.items():
            answer = await http.post("/v1/traces", content=body, headers=gz)
            assert answer.status_code == 400, name
        assert await store.trace("33" * 16) == []


async def test_a_body_over_the_limit_is_refused_before_it_is_read(tr: RunningNode,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A Content-Length over the limit is answered 413 at once: the node does not wait for (and
    buffer) a body it will refuse. (What the client still sends is read and dropped, so that it gets
    the 413 rather than a reset connection, which exporters would retry.)"""
    monkeypatch.setattr(collector_module, "MAX_BODY", 1000)
    url = httpx.URL(tr.node.url("otlp"))

    def send() -> bytes:
        with socket.create_connection((url.host, url.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                         b"Content-Length: 1000000000\r\n\r\n" + b"\0" * 100)
            return sock.recv(4096)  # times out (an error) if the node waits for the rest

    head = await asyncio.to_thread(send)
    assert head.startswith(b"HTTP/1.1 413"), head[:100]

    async def chunks() -> Any:
        for _ in range(20):
            yield b"\0" * 100

    async with httpx.AsyncClient() as http:  # chunked, without a length: refused once past the limit
        answer = await http.post(str(url) + "/v1/traces", content=chunks(), headers=PROTOBUF)
    assert answer.status_code == 413


async def test_otlp_json_numbers_out_of_range_and_bad_link_ids_are_400(tr: RunningNode) -> None:  # noqa: F811
    """Values the store cannot hold are the client's mistake: a 400 naming the field, never a 503 that
    an exporter retries for as long as it lives."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    huge = b"%d" % (1 << 70)  # orjson stops at 64 bits: such numbers are written into the text
    cases = {"kind": ({}, (b'"kind":2', b'"kind":' + huge)),
             "status.code": ({"status": {"code": 0}}, (b'"status":{"code":0}', b'"status":{"code":' + huge + b"}")),
             "links.traceId": ({"links": [{"traceId": "not hex", "spanId": "00f067aa0ba902b8"}]}, (b"", b"")),
             "links.spanId": ({"links": [{"traceId": trace, "spanId": 12}]}, (b"", b""))}
    async with httpx.AsyncClient(base_url=tr.node.url("otlp")) as http:
        for field, (extra, (old, new)) in cases.items():
            body = otlp_doc(trace, [{**span("00f067aa0ba902b7", "x", 0, 1), **extra}])
            if old:
                assert old in body
                body = body.replace(old, new)
            answer = await http.post("/v1/traces", content=body, headers=JSON)
            assert answer.status_code == 400, (field, answer.text)
            assert answer.json()["errors"][0]["field"] == field
        ok = await http.post("/v1/traces", content=otlp_doc(trace, [span("00f067aa0ba902b7", "x", 0, 1)]),
                             headers=JSON)
        assert ok.status_code == 200  # and the store is fine


def kv(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def rich_request(trace: bytes) -> bytes:
    """One resource, two instrumentation scopes; spans with every attribute type, an event, a link with
    attributes, a trace state and an error status."""
    message = ExportTraceServiceRequest()
    rs = message.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", string_value="shop"), kv("host.name", string_value="h1")])
    http_scope, db_scope = rs.scope_spans.add(), rs.scope_spans.add()
    http_scope.scope.name, db_scope.scope.name = "http", "db"
    root = http_scope.spans.add(trace_id=trace, span_id=b"\x01" * 8, name="GET /", kind=2, trace_state="v=1",
                                start_time_unix_nano=1_700_000_000_000_000_000,
                                end_time_unix_nano=1_700_000_000_050_000_000)
    root.attributes.extend([kv("s", string_value="x"), kv("i", int_value=7), kv("d", double_value=1.5),
                            kv("b", bool_value=True),
                            kv("a", array_value=ArrayValue(values=[AnyValue(string_value="p")]))])
    event = root.events.add(time_unix_nano=1_700_000_000_010_000_000, name="retry")
    event.attributes.append(kv("attempt", int_value=2))
    link = root.links.add(trace_id=b"\x09" * 16, span_id=b"\x08" * 8, trace_state="l=1")
    link.attributes.append(kv("why", string_value="batch"))
    child = db_scope.spans.add(trace_id=trace, span_id=b"\x02" * 8, parent_span_id=b"\x01" * 8, name="SELECT",
                               kind=3, start_time_unix_nano=1_700_000_000_020_000_000,
                               end_time_unix_nano=1_700_000_000_030_000_000)
    child.status.code, child.status.message = 2, "timeout"
    return message.SerializeToString()


async def test_an_export_gives_back_the_whole_trace(tr: RunningNode, tmp_path: Path) -> None:  # noqa: F811
    """``:export`` is OTLP/JSON any receiver takes back: posted to a fresh node, the trace reads the same
    through the Jaeger API (scopes, links, trace state, events, status, attributes)."""
    trace = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    bearer = {"Authorization": f"Bearer {tr.token}"}
    async with httpx.AsyncClient(base_url=tr.url, headers=bearer) as http:
        assert (await http.post("/v1/traces", content=rich_request(trace), headers=PROTOBUF)).status_code == 200
        exported = (await http.get(f"/v1/traces/{trace.hex()}:export")).json()
        original = (await http.get(f"/api/traces/{trace.hex()}")).json()["data"][0]
    [resource] = exported["resourceSpans"]
    scopes = {ss["scope"]["name"]: [s["name"] for s in ss["spans"]] for ss in resource["scopeSpans"]}
    assert scopes == {"http": ["GET /"], "db": ["SELECT"]}
    root = next(s for ss in resource["scopeSpans"] for s in ss["spans"] if s["name"] == "GET /")
    assert root["traceState"] == "v=1"
    assert root["links"] == [{"traceId": "09" * 16, "spanId": "08" * 8, "traceState": "l=1",
                              "attributes": [{"key": "why", "value": {"stringValue": "batch"}}]}]
    again = await start_again(tmp_path, exported)
    assert again == original


async def start_again(tmp_path: Path, exported: dict[str, Any]) -> dict[str, Any]:
    from mezzo.testing.fixtures import start_node

    other = await start_node(tmp_path / "other", otlp_port=0, zipkin_port=0)
    try:
        async with httpx.AsyncClient(base_url=other.url, headers={"Authorization": f"Bearer {other.token}"}) as http:
            answer = await http.post("/v1/traces", content=orjson.dumps(exported), headers=JSON)
            assert answer.status_code == 200, answer.text
            trace_id = exported["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
            return (await http.get(f"/api/traces/{trace_id}")).json()["data"][0]  # type: ignore[no-any-return]
    finally:
        await other.node.stop()
