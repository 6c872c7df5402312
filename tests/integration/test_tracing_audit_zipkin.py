"""Audit: Zipkin v2 on its port — what a Brave/zipkin-js reporter sends reads back the same from
``/api/v2/trace``, the query endpoints Zipkin's UI calls, malformed spans refused with the field (never
a 500), and attribute values shown as Zipkin tags (text) and Jaeger tags (typed, JSON for lists)."""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from integration.test_tracing import tr  # noqa: F401  (the tr fixture)
from mezzo.testing.fixtures import RunningNode, start_node
from mezzo.tracing.store import TraceStore

TRACE = "5af7183fb1d4cf5f5af7183fb1d4cf5f"


def brave_spans() -> list[dict[str, Any]]:
    """A client span and the server's shared span, as Brave reports them (v2 JSON)."""
    now = int(time.time() * 1_000_000) - 5_000_000
    return [
        {"traceId": TRACE, "id": "6b221d5bc9e6496c", "name": "get /api", "kind": "CLIENT", "timestamp": now,
         "duration": 20_000, "localEndpoint": {"serviceName": "frontend", "ipv4": "10.0.0.1"},
         "remoteEndpoint": {"serviceName": "backend", "ipv4": "10.0.0.2", "port": 8080},
         "tags": {"http.method": "GET", "http.path": "/api"},
         "annotations": [{"timestamp": now + 1_000, "value": "wire send"}]},
        {"traceId": TRACE, "id": "5b221d5bc9e6496c", "parentId": "6b221d5bc9e6496c", "name": "get /api",
         "kind": "SERVER", "timestamp": now + 2_000, "duration": 15_000,
         "localEndpoint": {"serviceName": "backend"}, "tags": {"error": "boom", "http.status_code": "500"}}]


async def test_a_reporters_spans_read_back_the_same(tr: RunningNode) -> None:  # noqa: F811
    zipkin = tr.node.url("zipkin")
    sent = brave_spans()
    async with httpx.AsyncClient(base_url=zipkin) as http:
        answer = await http.post("/api/v2/spans", content=gzip.compress(orjson.dumps(sent)),
                                 headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert answer.status_code == 202
        got = {s["id"]: s for s in (await http.get(f"/api/v2/trace/{TRACE}")).json()}
        client, server = got["6b221d5bc9e6496c"], got["5b221d5bc9e6496c"]
        for mine, theirs in ((client, sent[0]), (server, sent[1])):
            for key in ("traceId", "id", "name", "kind", "timestamp", "duration"):
                assert mine[key] == theirs[key], key
            assert mine["localEndpoint"]["serviceName"] == theirs["localEndpoint"]["serviceName"]
        assert server["parentId"] == "6b221d5bc9e6496c" and "parentId" not in client
        assert client["remoteEndpoint"] == {"serviceName": "backend"}
        assert client["annotations"] == sent[0]["annotations"]
        assert server["tags"] == {"error": "boom", "http.status_code": "500"}
        assert client["tags"]["http.method"] == "GET"

        assert sorted((await http.get("/api/v2/services")).json()) == ["backend", "frontend"]
        assert (await http.get("/api/v2/spans", params={"serviceName": "backend"})).json() == ["get /api"]
        missing = await http.get("/api/v2/spans")
        assert missing.status_code == 400, missing.text  # serviceName is required, as in Zipkin
        end = {"endTs": int(time.time() * 1000), "lookback": 3_600_000}
        by_remote = (await http.get("/api/v2/traces", params={"serviceName": "frontend",
                                                              "remoteServiceName": "backend", **end})).json()
        assert [t[0]["traceId"] for t in by_remote] == [TRACE]
        none = (await http.get("/api/v2/traces", params={"serviceName": "frontend", "remoteServiceName": "db",
                                                         **end})).json()
        assert none == []
        deps = (await http.get("/api/v2/dependencies", params=end)).json()
        assert {"parent": "frontend", "child": "backend", "callCount": 1, "errorCount": 1} in deps
        assert (await http.get("/api/v2/trace/" + "f" * 32)).status_code == 404


async def test_malformed_spans_are_a_400_naming_the_field(tr: RunningNode) -> None:  # noqa: F811
    ok = {"traceId": TRACE, "id": "6b221d5bc9e6496c", "name": "x", "timestamp": 1_000, "duration": 5}
    cases = {"[0].tags": {"tags": ["a"]}, "[0].localEndpoint": {"localEndpoint": "svc"},
             "[0].remoteEndpoint": {"remoteEndpoint": "svc"}, "[0].annotations": {"annotations": "x"},
             "[0].annotations[0]": {"annotations": ["x"]}, "[0].parentId": {"parentId": "not-hex"},
             "[0].id": {"id": "0" * 16}}
    store = tr.node.service(TraceStore)
    async with httpx.AsyncClient(base_url=tr.node.url("zipkin")) as http:
        for field, bad in cases.items():
            answer = await http.post("/api/v2/spans", json=[{**ok, **bad}])
            assert answer.status_code == 400, (field, answer.status_code, answer.text)
            problem = answer.json()
            assert answer.headers["content-type"] == "application/problem+json"
            assert problem["errors"][0]["field"] == field, problem
        assert await store.trace(TRACE) == []
        # as Zipkin reads them: an all-zero parentId, or the span's own id, is a root
        roots = [{**ok, "parentId": "0" * 16}, {**ok, "id": "7b221d5bc9e6496c", "parentId": "7b221d5bc9e6496c"}]
        assert (await http.post("/api/v2/spans", json=roots)).status_code == 202  # the collector is fine
        assert [s.parent_id for s in await store.trace(TRACE)] == ["", ""]


async def test_attribute_values_as_zipkin_and_jaeger_tags(tr: RunningNode) -> None:  # noqa: F811
    """Zipkin tags are strings: booleans are ``true``/``false`` (what search matches), lists and maps
    JSON, as OpenTelemetry's Zipkin exporter writes them. Jaeger keeps numbers and booleans typed and
    writes lists and maps as JSON strings, as Jaeger's own OTLP translation does."""
    now = int(time.time() * 1e9) - 1_000_000_000
    attributes = [{"key": "ok", "value": {"boolValue": True}}, {"key": "n", "value": {"intValue": "3"}},
                  {"key": "ratio", "value": {"doubleValue": 0.5}},
                  {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}},
                  {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": False}}]}}}]
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]},
                              "scopeSpans": [{"spans": [{"traceId": TRACE, "spanId": "6b221d5bc9e6496c",
                                                         "name": "op", "kind": 2, "startTimeUnixNano": str(now),
                                                         "endTimeUnixNano": str(now + 1000),
                                                         "attributes": attributes}]}]}]}
    async with httpx.AsyncClient() as http:
        answer = await http.post(tr.node.url("otlp") + "/v1/traces", content=orjson.dumps(doc),
                                 headers={"content-type": "application/json"})
        assert answer.status_code == 200
        [zspan] = (await http.get(f"{tr.node.url('zipkin')}/api/v2/trace/{TRACE}")).json()
        assert zspan["tags"] == {"ok": "true", "n": "3", "ratio": "0.5", "tags": '["a",2]', "map": '{"k":false}'}
        found = (await http.get(f"{tr.node.url('zipkin')}/api/v2/traces",
                                params={"annotationQuery": f"ok={zspan['tags']['ok']}"})).json()
        assert len(found) == 1  # what a tag shows is what a search for it matches
        jaeger = (await http.get(f"{tr.url}/api/traces/{TRACE}",
                                 headers={"Authorization": f"Bearer {tr.token}"})).json()["data"][0]
    tags = {t["key"]: (t["type"], t["value"]) for t in jaeger["spans"][0]["tags"]}
    assert tags["ok"] == ("bool", True) and tags["n"] == ("int64", 3) and tags["ratio"] == ("float64", 0.5)
    assert tags["tags"] == ("string", '["a",2]') and tags["map"] == ("string", '{"k":false}')


# --- /api/v2/remoteServices ------------------------------------------------------------------

def _otlp_proto_client_span(trace: bytes, peer: str) -> bytes:
    """An OTLP/protobuf request (as the SDK exporter sends it): one client span of ``checkout`` naming its
    peer among other attributes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    now = time.time_ns() - 2_000_000_000
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="checkout")))
    span = rs.scope_spans.add().spans.add(trace_id=trace, span_id=b"\x01" * 8, name="reserve", kind=3,
                                          start_time_unix_nano=now, end_time_unix_nano=now + 1000)
    span.attributes.extend([KeyValue(key="http.method", value=AnyValue(string_value="POST")),
                            KeyValue(key="peer.service", value=AnyValue(string_value=peer)),
                            KeyValue(key="retries", value=AnyValue(int_value=2))])
    return req.SerializeToString()


async def remote_services_answer_as_zipkin(zipkin: str, otlp: str) -> None:
    """Zipkin spans with a remoteEndpoint and OTLP spans (JSON and protobuf) with peer.service list their
    remote services under their own local service only, lowercase and sorted, as Zipkin does."""
    now = int(time.time() * 1_000_000) - 5_000_000
    server = {"traceId": TRACE, "id": "7b221d5bc9e6496c", "name": "get /pay", "kind": "SERVER", "timestamp": now,
              "duration": 10, "localEndpoint": {"serviceName": "backend"},
              "remoteEndpoint": {"serviceName": "frontend", "ipv4": "10.0.0.1"}}
    to_payments = {**brave_spans()[0], "id": "8b221d5bc9e6496c", "remoteEndpoint": {"serviceName": "Payments"}}
    local = {"traceId": TRACE, "id": "9b221d5bc9e6496c", "name": "render", "timestamp": now, "duration": 3,
             "localEndpoint": {"serviceName": "frontend"}}
    otlp_json = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeSpans": [{"spans": [{"traceId": "ab" * 16, "spanId": "00f067aa0ba902b7", "name": "get stock",
                                   "kind": 3, "startTimeUnixNano": str(now * 1000),
                                   "endTimeUnixNano": str(now * 1000 + 5000),
                                   "attributes": [{"key": "peer.service", "value": {"stringValue": "inventory"}}]}]}]}]}
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{zipkin}/api/v2/spans",
                                json=[*brave_spans(), server, to_payments, local])).status_code == 202
        answer = await http.post(f"{otlp}/v1/traces", content=orjson.dumps(otlp_json),
                                 headers={"content-type": "application/json"})
        assert answer.status_code == 200
        answer = await http.post(f"{otlp}/v1/traces", content=_otlp_proto_client_span(b"\xcd" * 16, "AuthTokenCache"),
                                 headers={"content-type": "application/x-protobuf"})
        assert answer.status_code == 200

        def remote(**params: str) -> Any:
            return http.get(f"{zipkin}/api/v2/remoteServices", params=params)

        assert (await remote(serviceName="frontend")).json() == ["backend", "payments"]
        assert (await remote(serviceName="backend")).json() == ["frontend"]
        assert (await remote(serviceName="checkout")).json() == ["authtokencache", "inventory"]
        assert (await remote(serviceName="inventory")).json() == []  # called, but it calls no one
        assert (await remote(serviceName="nobody")).json() == []
        assert (await remote(serviceName="")).json() == []
        missing = await remote()
        assert missing.status_code == 400, missing.text  # serviceName is required, as in Zipkin

        # a name from remoteServices finds the spans that sent it in another case
        end = {"endTs": int(time.time() * 1000), "lookback": 3_600_000}
        found = (await http.get(f"{zipkin}/api/v2/traces", params={
            "serviceName": "checkout", "remoteServiceName": "authtokencache", **end})).json()
        assert [[s["remoteEndpoint"]["serviceName"] for s in t] for t in found] == [["AuthTokenCache"]]


async def test_remote_services_sqlite(tr: RunningNode) -> None:  # noqa: F811
    await remote_services_answer_as_zipkin(tr.node.url("zipkin"), tr.node.url("otlp"))


async def test_remote_services_postgres(postgres_url: str, tmp_path: Path) -> None:
    running = await start_node(tmp_path / "data", trace_store=postgres_url)
    try:
        await remote_services_answer_as_zipkin(running.node.url("zipkin"), running.node.url("otlp"))
    finally:
        await running.node.stop()


async def remote_services_go_with_their_last_span(store: Any) -> None:
    """Retention deletes spans by start; a remote service stays listed while one span naming it does."""
    from mezzo.tracing.model import Span

    def client(n: int, peer: str, age_s: int, service: str = "shop") -> Span:
        start = int((time.time() - age_s) * 1_000_000)
        return Span(f"{n:032x}", f"{n:016x}", "", service, "call", 3, start, 5, attributes={"peer.service": peer})

    await store.open()
    try:
        await store.write([client(1, "old", 7200), client(2, "both", 7200), client(3, "new", 10),
                           client(4, "db", 10, service="worker")])
        await store.write([client(5, "both", 5)])
        assert await store.remote_services("shop") == ["both", "new", "old"]
        assert await store.enforce_retention(3600, None) == 2
        assert await store.remote_services("shop") == ["both", "new"]
        assert await store.remote_services("worker") == ["db"]
        assert await store.enforce_retention(3600, 1) == 2  # by count: the oldest go first
        assert await store.remote_services("shop") == ["both"] and await store.remote_services("worker") == []
        assert await store.enforce_retention(3600, 0) == 1
        assert await store.remote_services("shop") == []
    finally:
        await store.close()


async def test_remote_services_retention_sqlite(tmp_path: Path) -> None:
    await remote_services_go_with_their_last_span(TraceStore(tmp_path / "traces.db"))


async def test_remote_services_retention_postgres(postgres_url: str) -> None:
    from mezzo.tracing.store_postgres import PostgresTraceStore

    await remote_services_go_with_their_last_span(PostgresTraceStore(postgres_url))
