"""Audit: the query APIs give the same answers on every trace store — Jaeger's (what its UI and
Grafana's Jaeger data source call: services, operations with kinds, search by each parameter,
trace by id, dependencies), Zipkin's v2 search, and Mezzo's own search, paging, RED and service graph."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from mezzo.testing.fixtures import RunningNode

from .conftest import ingest, now_us, otlp_span

T1, T2, T3 = "a1" * 16, "b2" * 16, "c3" * 16
ROOT, CHARGE, SELECT, B, OTHER = "1" * 16, "2" * 16, "3" * 16, "4" * 16, "5" * 16


@pytest.fixture
async def seeded(traces: RunningNode) -> AsyncIterator[tuple[RunningNode, int]]:
    """T1: shop GET /a (40 ms, http.status_code=500, cached, tier=pro) -> shop charge (error) and
    db SELECT; T2: shop GET /b (300 ms), 100 ms later; T3: db SELECT in region eu, 200 ms after T1."""
    t0 = now_us() - 120_000_000
    await ingest(traces, "shop", [
        otlp_span(T1, ROOT, "GET /a", t0, 40_000, **{"http.status_code": 500, "cached": True, "tier": "pro"}),
        otlp_span(T1, CHARGE, "charge", t0 + 5_000, 20_000, parent=ROOT, kind=1, error=True),
        otlp_span(T2, B, "GET /b", t0 + 100_000, 300_000)])
    await ingest(traces, "db", [otlp_span(T1, SELECT, "SELECT", t0 + 10_000, 10_000, parent=ROOT)])
    await ingest(traces, "db", [otlp_span(T3, OTHER, "SELECT", t0 + 200_000, 2_000)], region="eu")
    yield traces, t0


@pytest.fixture
async def api(seeded: tuple[RunningNode, int]) -> AsyncIterator[httpx.AsyncClient]:
    node, _ = seeded
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}) as http:
        yield http


async def jaeger_ids(api: httpx.AsyncClient, **params: Any) -> list[str]:
    answer = await api.get("/api/traces", params=params)
    assert answer.status_code == 200, answer.text
    return [trace["traceID"] for trace in answer.json()["data"]]


async def test_jaeger_services_and_operations(api: httpx.AsyncClient) -> None:
    services = (await api.get("/api/services")).json()
    assert services == {"data": ["db", "shop"], "total": 2, "limit": 0, "offset": 0, "errors": None}
    names = (await api.get("/api/services/shop/operations")).json()["data"]
    assert names == ["GET /a", "GET /b", "charge"]
    server = (await api.get("/api/operations", params={"service": "shop", "spanKind": "server"})).json()["data"]
    assert server == [{"name": "GET /a", "spanKind": "server"}, {"name": "GET /b", "spanKind": "server"}]
    every = (await api.get("/api/operations", params={"service": "shop"})).json()["data"]
    assert {"name": "charge", "spanKind": "internal"} in every and len(every) == 3


async def test_jaeger_search_by_each_parameter(seeded: tuple[RunningNode, int], api: httpx.AsyncClient) -> None:
    _, t0 = seeded
    assert await jaeger_ids(api, service="shop") == [T2, T1]  # newest first
    assert await jaeger_ids(api, service="shop", limit=1) == [T2]
    assert await jaeger_ids(api, service="shop", operation="GET /b") == [T2]
    assert await jaeger_ids(api, service="shop", operation="all") == [T2, T1]  # Jaeger UI's "all"
    assert await jaeger_ids(api, service="shop", tags='{"http.status_code":"500"}') == [T1]
    assert await jaeger_ids(api, service="shop", tags='{"cached":"true"}') == [T1]
    assert await jaeger_ids(api, service="shop", tags='{"cached":true}') == [T1]
    assert await jaeger_ids(api, service="shop", tags='{"tier":"free"}') == []
    assert await jaeger_ids(api, tags='{"error":"true"}') == [T1]
    assert await jaeger_ids(api, service="db", tags='{"region":"eu"}') == [T3]  # resource attributes
    assert await jaeger_ids(api, service="shop", minDuration="100ms") == [T2]
    assert await jaeger_ids(api, service="shop", maxDuration="50ms") == [T1]
    assert await jaeger_ids(api, service="shop", minDuration="10ms", maxDuration="0.1s") == [T1]
    # what Grafana sends: start and end in microseconds, lookback=custom
    window = {"start": t0 + 50_000, "end": t0 + 150_000, "lookback": "custom"}
    assert await jaeger_ids(api, service="shop", **window) == [T2]
    assert await jaeger_ids(api, service="db", **window) == []
    assert await jaeger_ids(api, service="shop", lookback="1h") == [T2, T1]
    assert sorted(await jaeger_ids(api, traceID=[T1, T3])) == [T1, T3]


async def test_jaeger_trace_and_dependencies(seeded: tuple[RunningNode, int], api: httpx.AsyncClient) -> None:
    _, t0 = seeded
    [trace] = (await api.get(f"/api/traces/{T1}")).json()["data"]
    assert trace["traceID"] == T1 and len(trace["spans"]) == 3
    by_id = {span["spanID"]: span for span in trace["spans"]}
    assert {trace["processes"][s["processID"]]["serviceName"] for s in by_id.values()} == {"db", "shop"}
    assert by_id[SELECT]["references"] == [{"refType": "CHILD_OF", "traceID": T1, "spanID": ROOT}]
    assert by_id[ROOT]["references"] == [] and by_id[ROOT]["startTime"] == t0 and by_id[ROOT]["duration"] == 40_000
    assert {"key": "http.status_code", "type": "int64", "value": 500} in by_id[ROOT]["tags"]
    assert {"key": "cached", "type": "bool", "value": True} in by_id[ROOT]["tags"]
    assert {"key": "error", "type": "bool", "value": True} in by_id[CHARGE]["tags"]
    # Grafana's node graph: /api/dependencies?endTs=<ms>&lookback=<ms>
    end_ms = now_us() // 1000
    deps = (await api.get("/api/dependencies", params={"endTs": end_ms, "lookback": 3_600_000})).json()
    assert deps["data"] == [{"parent": "shop", "child": "db", "callCount": 1, "errorCount": 0}]
    old = (await api.get("/api/dependencies", params={"endTs": t0 // 1000 - 1000, "lookback": 60_000})).json()
    assert old["data"] == []


async def test_mezzo_search_paging_red_and_graph(seeded: tuple[RunningNode, int], api: httpx.AsyncClient) -> None:
    _, t0 = seeded

    async def ids(**params: Any) -> list[str]:
        answer = await api.get("/v1/traces", params=params)
        assert answer.status_code == 200, answer.text
        return [t["traceId"] for t in answer.json()["items"]]

    assert await ids(errors="true") == [T1]
    assert await ids(attr="tier=pro") == [T1]
    assert await ids(attr=["tier=pro", "cached=false"]) == []
    assert await ids(service="shop", minDuration="100ms") == [T2]
    assert await ids(service="shop", maxDuration="50ms") == [T1]
    assert await ids(start=t0 + 150_000, end=t0 + 250_000) == [T3]
    [summary] = (await api.get("/v1/traces", params={"attr": "tier=pro"})).json()["items"]
    assert summary == {"traceId": T1, "spans": 3, "startUs": t0, "durationUs": 40_000, "errors": 1,
                       "services": ["db", "shop"]}
    first = (await api.get(f"/v1/traces/{T1}", params={"limit": 2})).json()
    rest = (await api.get(f"/v1/traces/{T1}", params={"offset": 2, "limit": 2})).json()
    assert (first["next"], rest["next"]) == (2, None)
    assert [s["id"] for s in first["items"] + rest["items"]] == [ROOT, CHARGE, SELECT]  # by start time
    red = (await api.get("/v1/tracing/red", params={"window": "1h", "service": "shop"})).json()["items"]
    assert [(r["operation"], r["calls"], r["errorRatio"], r["p99Us"]) for r in red] == [
        ("GET /a", 1, 0.0, 40_000), ("GET /b", 1, 0.0, 300_000)]  # entry spans only: not "charge"
    assert red[0]["rate"] == pytest.approx(1 / 3600)
    [edge] = (await api.get("/v1/tracing/dependencies", params={"window": "1h"})).json()["items"]
    assert edge == {"parent": "shop", "child": "db", "callCount": 1, "errorCount": 0, "p50Us": 10_000,
                    "p95Us": 10_000, "p99Us": 10_000}


async def test_zipkin_search(seeded: tuple[RunningNode, int]) -> None:
    node, _ = seeded

    async def ids(**params: Any) -> list[str]:
        async with httpx.AsyncClient() as http:
            answer = await http.get(node.node.url("zipkin") + "/api/v2/traces", params=params)
        assert answer.status_code == 200, answer.text
        return [trace[0]["traceId"] for trace in answer.json()]

    assert await ids(serviceName="shop") == [T2, T1]
    assert await ids(serviceName="shop", spanName="GET /b") == [T2]
    assert await ids(serviceName="shop", annotationQuery="tier=pro") == [T1]
    assert await ids(serviceName="shop", minDuration="100000") == [T2]
    assert await ids(serviceName="shop", maxDuration="50000") == [T1]
    assert await ids(serviceName="shop", limit="1") == [T2]
    # a bare word is a tag key (or annotation) that must be present: "error" is the classic
    assert await ids(serviceName="shop", annotationQuery="error") == [T1]
    assert await ids(serviceName="shop", annotationQuery="tier") == [T1]
    assert await ids(serviceName="shop", annotationQuery="nosuchtag") == []
    assert await ids(serviceName="shop", annotationQuery="tier and http.status_code=500") == [T1]


async def test_retention_by_age_and_count(trace_store: Any) -> None:
    from mezzo.tracing.model import Span

    now = now_us()
    ages = [3 * 86_400, 2 * 86_400, 60, 30, 10]  # seconds ago
    await trace_store.write([Span(f"{i + 1:032x}", f"{i + 1:016x}", "", "shop", "op", 2,
                                  now - age * 1_000_000, 5) for i, age in enumerate(ages)])
    assert await trace_store.enforce_retention(86_400, None) == 2
    assert await trace_store.enforce_retention(86_400, 2) == 1  # the oldest of the three left
    from mezzo.tracing.store import Query

    assert await trace_store.find(Query(limit=10)) == [f"{5:032x}", f"{4:032x}"]


async def test_any_text_is_stored_and_does_not_fail_its_neighbours(trace_store: Any) -> None:
    """A NUL character is valid in OTLP strings; PostgreSQL's text and jsonb refuse it. A request
    carrying one must not fail (a 503 its exporter retries for ever), nor fail the requests whose
    spans share its commit."""
    import asyncio

    from mezzo.tracing.model import Span

    now = now_us()
    good = Span("d" * 32, "1" * 16, "", "shop", "fine", 2, now, 5, attributes={"k": "v"})
    odd = Span("e" * 32, "2" * 16, "", "shop\x00", "a\x00b", 2, now, 5, 2, "bad\x00status",
               attributes={"k\x00": "a\x00b", "list": ["x\x00"]}, resource={"service.name": "shop\x00"})
    await asyncio.gather(trace_store.write([good]), trace_store.write([odd]))
    [stored] = await trace_store.trace("e" * 32)
    assert stored.name in ("a\x00b", "a\ufffdb")
    assert stored.attributes in ({"k\x00": "a\x00b", "list": ["x\x00"]}, {"k\ufffd": "a\ufffdb", "list": ["x\ufffd"]})
    assert [s.name for s in await trace_store.trace("d" * 32)] == ["fine"]
    assert orjson.dumps(stored.attributes)  # readable back as JSON
