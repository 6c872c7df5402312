"""Tracing: OTLP and Zipkin ingest, the Jaeger and Zipkin query APIs, search, paging, export, limits."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mezzo.testing.fixtures import RunningNode, start_node
from mezzo.tracing import store as store_module
from mezzo.tracing.store import TraceStore


@pytest.fixture
async def tr(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data", otlp_port=0, zipkin_port=0)
    try:
        yield running
    finally:
        await running.node.stop()


def otlp_doc(trace: str, spans: list[dict], service: str = "shop") -> bytes:  # type: ignore[type-arg]
    return orjson.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [{"traceId": trace, **s} for s in spans]}]}]})


def span(span_id: str, name: str, start_ms: int, duration_ms: int, parent: str = "", **extra) -> dict:  # type: ignore[no-untyped-def, type-arg]
    now = int(time.time() * 1000) - 60_000 + start_ms
    return {"spanId": span_id, "parentSpanId": parent, "name": name, "kind": 2,
            "startTimeUnixNano": str(now * 1_000_000), "endTimeUnixNano": str((now + duration_ms) * 1_000_000), **extra}


async def test_sdk_exporter_and_jaeger_queries(tr: RunningNode) -> None:
    """The official OTLP/HTTP exporter (protobuf) works unchanged; Jaeger's UI calls get its shapes."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    provider = TracerProvider(resource=Resource.create({"service.name": "checkout", "deployment.environment": "ci"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=tr.node.url("otlp") + "/v1/traces")))
    tracer = provider.get_tracer("test")

    def work() -> str:
        with tracer.start_as_current_span("POST /checkout", attributes={"http.status_code": 500}) as root:
            with tracer.start_as_current_span("charge card") as child:
                child.set_status(Status(StatusCode.ERROR, "declined"))
            return format(root.get_span_context().trace_id, "032x")

    trace_id = await asyncio.to_thread(work)
    await asyncio.to_thread(provider.shutdown)
    headers = {"Authorization": f"Bearer {tr.token}"}
    async with httpx.AsyncClient(base_url=tr.url, headers=headers) as http:
        assert (await http.get("/api/services")).json()["data"] == ["checkout"]
        ops = (await http.get("/api/services/checkout/operations")).json()["data"]
        assert ops == ["POST /checkout", "charge card"]
        kinds = (await http.get("/api/operations", params={"service": "checkout"})).json()["data"]
        assert {"name": "charge card", "spanKind": "internal"} in kinds
        [trace] = (await http.get(f"/api/traces/{trace_id}")).json()["data"]
        assert trace["traceID"] == trace_id and len(trace["spans"]) == 2
        child = next(s for s in trace["spans"] if s["operationName"] == "charge card")
        assert child["references"][0]["refType"] == "CHILD_OF"
        assert {"key": "error", "type": "bool", "value": True} in child["tags"]
        process = trace["processes"][child["processID"]]
        assert process["serviceName"] == "checkout"
        assert {"key": "deployment.environment", "type": "string", "value": "ci"} in process["tags"]
        found = (await http.get("/api/traces", params={"service": "checkout", "tags": '{"http.status_code":"500"}',
                                                      "lookback": "1h"})).json()["data"]
        assert [t["traceID"] for t in found] == [trace_id]
        none = (await http.get("/api/traces", params={"service": "checkout", "minDuration": "10s"})).json()["data"]
        assert none == []
        assert (await http.get("/api/traces/" + "f" * 32)).status_code == 404
        assert (await http.get("/api/traces/not-hex")).status_code == 400


async def test_otlp_json_gzip_zipkin_dependencies_and_export(tr: RunningNode) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    body = otlp_doc(trace, [span("00f067aa0ba902b7", "GET /orders", 0, 40,
                                 attributes=[{"key": "http.route", "value": {"stringValue": "/orders"}}]),
                            span("00f067aa0ba902b8", "SELECT", 5, 10, parent="00f067aa0ba902b7")])
    otlp, zipkin = tr.node.url("otlp"), tr.node.url("zipkin")
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{otlp}/v1/traces", content=gzip.compress(body),
                            headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert r.status_code == 200 and r.json() == {}
        zspan = [{"traceId": trace, "id": "aaaaaaaaaaaaaaaa", "parentId": "00f067aa0ba902b7", "name": "reserve",
                  "kind": "SERVER", "timestamp": int(time.time() * 1e6) - 50_000_000, "duration": 2000,
                  "localEndpoint": {"serviceName": "stock"}, "tags": {"error": "out of stock"}}]
        assert (await http.post(f"{zipkin}/api/v2/spans", json=zspan)).status_code == 202
        assert sorted((await http.get(f"{zipkin}/api/v2/services")).json()) == ["shop", "stock"]
        got = (await http.get(f"{zipkin}/api/v2/trace/{trace}")).json()
        assert {s["name"] for s in got} == {"GET /orders", "SELECT", "reserve"}
        assert next(s for s in got if s["name"] == "reserve")["tags"]["error"] == "out of stock"
        traces = (await http.get(f"{zipkin}/api/v2/traces", params={"serviceName": "stock",
                                                                     "annotationQuery": "error=out of stock"})).json()
        assert len(traces) == 1 and len(traces[0]) == 3
        deps = (await http.get(f"{zipkin}/api/v2/dependencies", params={"endTs": int(time.time() * 1000)})).json()
        assert {"parent": "shop", "child": "stock", "callCount": 1, "errorCount": 1} in deps

    headers = {"Authorization": f"Bearer {tr.token}"}
    async with httpx.AsyncClient(base_url=tr.url, headers=headers) as http:
        page = (await http.get(f"/v1/traces/{trace}", params={"limit": 2})).json()
        assert page["spans"] == 3 and page["errors"] == 1 and len(page["items"]) == 2 and page["next"] == 2
        rest = (await http.get(f"/v1/traces/{trace}", params={"offset": 2, "limit": 2})).json()
        assert len(rest["items"]) == 1 and rest["next"] is None
        errors = (await http.get("/v1/traces", params={"errors": True})).json()["items"]
        assert [t["traceId"] for t in errors] == [trace]
        by_attr = (await http.get("/v1/traces", params={"attr": "http.route=/orders"})).json()["items"]
        assert [t["traceId"] for t in by_attr] == [trace]
        exported = (await http.get(f"/v1/traces/{trace}:export")).json()
        assert sum(len(ss["spans"]) for rs in exported["resourceSpans"] for ss in rs["scopeSpans"]) == 3
        # an export is itself a valid OTLP/JSON request
        again = await http.post("/v1/traces", content=orjson.dumps(exported), headers={"content-type": "application/json"})
        assert again.status_code == 200


async def test_bad_input_and_backpressure(tr: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    otlp = tr.node.url("otlp") + "/v1/traces"
    async with httpx.AsyncClient() as http:
        r = await http.post(otlp, content=b"\x08\x96", headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 400 and r.headers["content-type"] == "application/x-protobuf"
        r = await http.post(otlp, content=otlp_doc("zz", [span("00f067aa0ba902b7", "x", 0, 1)]),
                            headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "traceId"
        r = await http.post(otlp, content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = await http.post(otlp, content=b"not gzip", headers={"content-type": "application/json",
                                                                "content-encoding": "gzip"})
        assert r.status_code == 400
        from mezzo.tracing import collector

        monkeypatch.setattr(collector, "MAX_BODY", 100)
        r = await http.post(otlp, content=otlp_doc("4bf92f3577b34da6a3ce929d0e0e4736",
                                                   [span("00f067aa0ba902b7", "x" * 200, 0, 1)]),
                            headers={"content-type": "application/json"})
        assert r.status_code == 413
        monkeypatch.setattr(collector, "MAX_BODY", 16 * 1024 * 1024)
        monkeypatch.setattr(store_module, "MAX_PENDING", 0)
        r = await http.post(otlp, content=otlp_doc("4bf92f3577b34da6a3ce929d0e0e4736",
                                                   [span("00f067aa0ba902b7", "x", 0, 1)]),
                            headers={"content-type": "application/json"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"  # retryable, never a silent drop
        r = await http.post(tr.node.url("zipkin") + "/api/v2/spans", json={"not": "a list"})
        assert r.status_code == 400


async def test_retention_by_age_and_count(tr: RunningNode) -> None:
    store = tr.node.service(TraceStore)
    old = int((time.time() - 3 * 86400) * 1000)
    async with httpx.AsyncClient() as http:
        for i, start in enumerate((old, old + 1, None, None)):
            s = span(f"00f067aa0ba902b{i}", f"op{i}", 0, 1)
            if start is not None:
                s["startTimeUnixNano"] = str(start * 1_000_000)
                s["endTimeUnixNano"] = str((start + 1) * 1_000_000)
            await http.post(tr.node.url("otlp") + "/v1/traces", content=otlp_doc(f"{i + 1:032x}", [s]),
                            headers={"content-type": "application/json"})
    assert await store.enforce_retention(86400, None) == 2
    assert await store.enforce_retention(86400, 1) == 1
    assert len(await store.find(store_module.Query(limit=10))) == 1


async def test_red_metrics_edges_and_remote_sampling(tr: RunningNode) -> None:
    trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    spans = [span("10f067aa0ba902b7", "GET /a", 0, 30), span("10f067aa0ba902b8", "GET /a", 1, 50),
             span("10f067aa0ba902b9", "GET /a", 2, 10, status={"code": 2})]
    async with httpx.AsyncClient() as http:
        await http.post(tr.node.url("otlp") + "/v1/traces", content=otlp_doc(trace, spans),
                        headers={"content-type": "application/json"})
        child = [span("20f067aa0ba902b7", "SELECT", 3, 5, parent="10f067aa0ba902b7")]
        await http.post(tr.node.url("otlp") + "/v1/traces", content=otlp_doc(trace, child, service="db"),
                        headers={"content-type": "application/json"})
        doc = (await http.get(tr.node.url("otlp") + "/sampling", params={"service": "shop"})).json()
        assert doc == {"strategyType": "PROBABILISTIC", "probabilisticSampling": {"samplingRate": 1.0}}
    headers = {"Authorization": f"Bearer {tr.token}"}
    async with httpx.AsyncClient(base_url=tr.url, headers=headers) as http:
        red = (await http.get("/v1/tracing/red", params={"window": "1h"})).json()["items"]
        row = next(r for r in red if r["service"] == "shop")
        assert row["calls"] == 3 and abs(row["errorRatio"] - 1 / 3) < 1e-9
        assert row["p50Us"] == 30_000 and row["p99Us"] == 50_000
        [edge] = (await http.get("/v1/tracing/dependencies", params={"window": "1h"})).json()["items"]
        assert edge["parent"] == "shop" and edge["child"] == "db" and edge["p99Us"] == 5000
        metrics = (await http.get("/metrics")).text
        assert 'mezzo_tracing_calls_total{operation="GET /a",service="shop"} 3.0' in metrics
        assert 'mezzo_tracing_errors_total{operation="GET /a",service="shop"} 1.0' in metrics
    async with tr.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "SamplingStrategy",
                                      "metadata": {"name": "shop"},
                                      "spec": {"service": "shop", "probability": 0.25,
                                               "operations": [{"operation": "GET /a", "probability": 1}]}})
    from mezzo.testing.fixtures import wait_for

    async def strategy() -> dict:  # type: ignore[type-arg]
        async with httpx.AsyncClient() as http:
            return (await http.get(tr.node.url("otlp") + "/sampling", params={"service": "shop"})).json()  # type: ignore[no-any-return]

    async def applied() -> bool:
        return (await strategy())["probabilisticSampling"]["samplingRate"] == 0.25

    await wait_for(applied)
    doc = await strategy()
    assert doc["operationSampling"]["perOperationStrategies"][0]["operation"] == "GET /a"


def test_critical_path_and_compare() -> None:
    from mezzo.tracing.analysis import compare, critical_path
    from mezzo.tracing.model import Span

    def s(sid: str, parent: str, start: int, duration: int, name: str) -> Span:
        return Span("a" * 32, sid, parent, "svc", name, 2, start, duration)

    # root 0..100; a 10..40; b 30..90 (finishes last); c inside b 40..80
    spans = [s("1", "", 0, 100, "root"), s("2", "1", 10, 30, "a"), s("3", "1", 30, 60, "b"), s("4", "3", 40, 40, "c")]
    path = critical_path(spans)
    assert [p["name"] for p in path] == ["root", "b", "c", "a"]
    assert sum(p["selfUs"] for p in path) == 100  # the path accounts for the whole trace
    result = compare(spans, spans[:3])
    assert result["spansA"] == 4 and result["spansB"] == 3
    assert next(r for r in result["operations"] if r["operation"] == "c")["only"] == "a"


async def test_tail_sampling_keeps_errors_and_slow_traces(tr: RunningNode) -> None:
    from mezzo.testing.fixtures import wait_for
    from mezzo.tracing.collector import Collector

    async with tr.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "TailSamplingPolicy",
                                      "metadata": {"name": "keep-interesting"},
                                      "spec": {"decisionWait": "200ms", "slowerThan": "500ms",
                                               "baselinePerSecond": 0}})
    await wait_for(lambda: tr.node.service(Collector).tail is not None)
    traces = {"error": "7bf92f3577b34da6a3ce929d0e0e4731", "slow": "7bf92f3577b34da6a3ce929d0e0e4732",
              "boring": "7bf92f3577b34da6a3ce929d0e0e4733"}
    async with httpx.AsyncClient() as http:
        for kind, trace in traces.items():
            s = span("30f067aa0ba902b7", kind, 0, 900 if kind == "slow" else 5,
                     **({"status": {"code": 2}} if kind == "error" else {}))
            r = await http.post(tr.node.url("otlp") + "/v1/traces", content=otlp_doc(trace, [s]),
                                headers={"content-type": "application/json"})
            assert r.status_code == 200
    store = tr.node.service(TraceStore)

    async def decided() -> bool:  # counted at the verdict; the kept spans are written right after
        tail = tr.node.service(Collector).tail
        return tail.kept + tail.dropped == 3 and bool(await store.trace(traces["error"])) \
            and bool(await store.trace(traces["slow"]))

    await wait_for(decided)
    assert tr.node.service(Collector).tail.kept == 2
    assert await store.trace(traces["boring"]) == []
    async with httpx.AsyncClient() as http:  # a late span of a kept trace is stored too
        late = span("30f067aa0ba902b8", "late", 1, 1, parent="30f067aa0ba902b7")
        await http.post(tr.node.url("otlp") + "/v1/traces", content=otlp_doc(traces["error"], [late]),
                        headers={"content-type": "application/json"})
    assert len(await store.trace(traces["error"])) == 2


async def test_postgres_trace_store_is_shared_by_nodes(postgres_url: str, tmp_path: Path) -> None:
    one = await start_node(tmp_path / "one", trace_store=postgres_url)
    two = await start_node(tmp_path / "two", trace_store=postgres_url)
    try:
        trace = "8bf92f3577b34da6a3ce929d0e0e4736"
        body = otlp_doc(trace, [span("40f067aa0ba902b7", "GET /x", 0, 20,
                                     attributes=[{"key": "tenant", "value": {"stringValue": "acme"}}]),
                                span("40f067aa0ba902b8", "child", 1, 5, parent="40f067aa0ba902b7",
                                     status={"code": 2})])
        async with httpx.AsyncClient() as http:
            r = await http.post(one.node.url("otlp") + "/v1/traces", content=body,
                                headers={"content-type": "application/json"})
            assert r.status_code == 200
            child = otlp_doc(trace, [span("40f067aa0ba902b9", "query", 2, 3, parent="40f067aa0ba902b8")], service="db")
            await http.post(one.node.url("otlp") + "/v1/traces", content=child,
                            headers={"content-type": "application/json"})
        headers = {"Authorization": f"Bearer {two.token}"}
        async with httpx.AsyncClient(base_url=two.url, headers=headers) as http:  # the other node answers
            assert (await http.get("/api/services")).json()["data"] == ["db", "shop"]
            [found] = (await http.get("/api/traces", params={"service": "shop", "tags": '{"tenant":"acme"}'})).json()["data"]
            assert found["traceID"] == trace and len(found["spans"]) == 3
            page = (await http.get(f"/v1/traces/{trace}")).json()
            assert page["spans"] == 3 and page["errors"] == 1 and page["services"] == ["db", "shop"]
            [edge] = (await http.get("/v1/tracing/dependencies", params={"window": "1h"})).json()["items"]
            assert (edge["parent"], edge["child"], edge["callCount"]) == ("shop", "db", 1)
            red = (await http.get("/v1/tracing/red", params={"window": "1h"})).json()["items"]
            assert {r["service"] for r in red} == {"db", "shop"}  # server spans enter each service
        assert await two.node.service(TraceStore).enforce_retention(0.0, None) == 3
    finally:
        await two.node.stop()
        await one.node.stop()



async def retention_by_size_drops_the_oldest(store: Any) -> None:
    from mezzo.tracing.model import Span

    await store.open()
    try:
        now_us = int(time.time() * 1_000_000)
        await store.write([Span(f"{i + 1:032x}", f"{i + 1:016x}", "", "shop", "op", 2, now_us - (400 - i) * 1000, 5,
                                attributes={"payload": os.urandom(1000).hex()}) for i in range(400)])
        assert await store.enforce_retention(86400, None, 1 << 40) == 0  # under the cap: nothing goes
        gone = await store.enforce_retention(86400, None, 400_000)
        assert 0 < gone < 400
        left = sorted(int(trace_id, 16) - 1 for trace_id in await store.find(store_module.Query(limit=400)))
        assert left == list(range(gone, 400))  # the oldest went first
        assert await store.enforce_retention(86400, None, 1) == 400 - gone  # nothing fits: everything goes
    finally:
        await store.close()


async def test_retention_by_size_sqlite(tmp_path: Path) -> None:
    await retention_by_size_drops_the_oldest(TraceStore(tmp_path / "traces.db"))


async def test_retention_by_size_postgres(postgres_url: str) -> None:
    from mezzo.tracing.store_postgres import PostgresTraceStore

    await retention_by_size_drops_the_oldest(PostgresTraceStore(postgres_url))
