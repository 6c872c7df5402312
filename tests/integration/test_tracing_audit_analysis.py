"""Audit: a 10,000-span trace served a page at a time, trace comparison and critical path over HTTP,
RED as Prometheus histograms, remote sampling documents as SDKs read them, tail sampling's rate-limited
baseline, retention run by the node from its settings, and ``mezzo trace show|deps`` output."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from integration.test_tracing import otlp_doc, span, tr  # noqa: F401  (the tr fixture)
from integration.test_tx_cli import mezzo
from mezzo.testing.fixtures import RunningNode, start_node, wait_for
from mezzo.tracing.store import TraceStore

BIG = "9bf92f3577b34da6a3ce929d0e0e4736"


def big_trace(spans: int) -> bytes:
    """A root with ``spans - 1`` children, one microsecond apart."""
    message = ExportTraceServiceRequest()
    rs = message.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "batch"
    scope = rs.scope_spans.add()
    start = (int(time.time()) - 60) * 1_000_000_000
    trace = bytes.fromhex(BIG)
    for i in range(spans):
        scope.spans.add(trace_id=trace, span_id=(i + 1).to_bytes(8, "big"), name="item" if i else "job",
                        parent_span_id=b"" if not i else (1).to_bytes(8, "big"), kind=1,
                        start_time_unix_nano=start + i * 1000, end_time_unix_nano=start + i * 1000 + 500 + (
                            spans * 1000 if not i else 0))
    return message.SerializeToString()


async def test_a_trace_of_ten_thousand_spans_comes_in_pages(tr: RunningNode) -> None:  # noqa: F811
    bearer = {"Authorization": f"Bearer {tr.token}"}
    async with httpx.AsyncClient(base_url=tr.url, headers=bearer, timeout=60) as http:
        answer = await http.post("/v1/traces", content=big_trace(10_001),
                                 headers={"content-type": "application/x-protobuf"})
        assert answer.status_code == 200
        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = (await http.get(f"/v1/traces/{BIG}", params={"offset": offset, "limit": 4000})).json()
            assert page["spans"] == 10_001 and page["services"] == ["batch"] and len(page["items"]) <= 4000
            seen += [s["id"] for s in page["items"]]
            offset = page["next"]
        assert len(seen) == len(set(seen)) == 10_001 and seen[0] == f"{1:016x}"  # every span once, root first
        [trace] = (await http.get(f"/api/traces/{BIG}")).json()["data"]
        assert len(trace["spans"]) == 10_001
        path = (await http.get(f"/v1/traces/{BIG}:critical-path")).json()["items"]
        assert path[0]["spanId"] == f"{1:016x}" and path[0]["depth"] == 0


async def test_compare_and_critical_path_over_http(tr: RunningNode) -> None:  # noqa: F811
    fast, slow = "a" * 32, "b" * 32
    async with httpx.AsyncClient() as http:
        for trace, db_ms in ((fast, 5), (slow, 50)):
            body = otlp_doc(trace, [span("1000000000000001", "GET /x", 0, db_ms + 10),
                                    span("1000000000000002", "render", 6, 3, parent="1000000000000001"),
                                    span("1000000000000003", "query", 5, db_ms, parent="1000000000000001")])
            answer = await http.post(tr.node.url("otlp") + "/v1/traces", content=body,
                                     headers={"content-type": "application/json"})
            assert answer.status_code == 200
    async with httpx.AsyncClient(base_url=tr.url, headers={"Authorization": f"Bearer {tr.token}"}) as http:
        result = (await http.get("/v1/tracing/compare", params={"a": fast, "b": slow})).json()
        assert (result["spansA"], result["spansB"]) == (3, 3)
        assert (result["durationUsA"], result["durationUsB"]) == (15_000, 60_000)
        top = result["operations"][0]  # the biggest difference first
        assert (top["operation"], top["deltaUs"]) in (("query", 45_000), ("GET /x", 45_000))
        assert (await http.get("/v1/tracing/compare", params={"a": fast, "b": "c" * 32})).status_code == 404
        bad = await http.get("/v1/tracing/compare", params={"a": fast, "b": "xyz"})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "b"  # the parameter that is wrong
        path = (await http.get(f"/v1/traces/{slow}:critical-path")).json()["items"]
        assert [p["name"] for p in path] == ["GET /x", "query"]  # render ran inside query: off the path
        assert sum(p["selfUs"] for p in path) == 60_000
        assert (await http.get(f"/v1/traces/{'c' * 32}:critical-path")).status_code == 404


async def test_red_histograms_and_collector_counters_in_prometheus(tr: RunningNode) -> None:  # noqa: F811
    trace = "6bf92f3577b34da6a3ce929d0e0e4736"
    spans = [span(f"20000000000000{i:02d}", "GET /r", i, 2 if i < 3 else 700) for i in range(4)]
    spans.append(span("2000000000000099", "internal step", 1, 1, parent="2000000000000000"))
    spans[-1]["kind"] = 1
    async with httpx.AsyncClient() as http:
        await http.post(tr.node.url("otlp") + "/v1/traces", content=otlp_doc(trace, spans, service="red"),
                        headers={"content-type": "application/json"})
        await http.post(tr.node.url("otlp") + "/v1/traces", content=b"{", headers={"content-type": "application/json"})
        text = (await http.get(tr.url + "/metrics", headers={"Authorization": f"Bearer {tr.token}"})).text
    labels = 'operation="GET /r",service="red"'
    assert f'mezzo_tracing_latency_seconds_count{{{labels}}} 4.0' in text
    assert f'mezzo_tracing_latency_seconds_bucket{{le="0.005",{labels}}} 3.0' in text
    assert f'mezzo_tracing_latency_seconds_bucket{{le="1.0",{labels}}} 4.0' in text
    assert 'operation="internal step"' not in text  # not an entry span
    assert 'mezzo_tracing_spans_received_total{protocol="otlp"} 5.0' in text
    assert 'mezzo_tracing_spans_rejected_total{protocol="otlp",reason="400"} 1.0' in text


async def sampling(node: RunningNode, service: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        return (await http.get(node.node.url("otlp") + "/sampling", params={"service": service})).json()  # type: ignore[no-any-return]


async def test_remote_sampling_documents(tr: RunningNode) -> None:  # noqa: F811
    """What Jaeger's remote samplers read: a whole number of traces per second (a fraction is not
    representable: 0.5/s must not become 0/s, sampling nothing), a "*" default, and a strategy that
    stays in force while any resource for its service exists."""
    def strategy(name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "mezzo.dev/v1", "kind": "SamplingStrategy", "metadata": {"name": name}, "spec": spec}

    async with tr.client() as client:
        await client.resources.apply([strategy("slow", service="slow", type="ratelimiting", tracesPerSecond=0.5),
                                      strategy("fallback", service="*", probability=0.5),
                                      strategy("a", service="shop", probability=0.1),
                                      strategy("b", service="shop", probability=0.2)])

        async def applied() -> bool:
            return "rateLimitingSampling" in await sampling(tr, "slow")

        await wait_for(applied)
        limited = (await sampling(tr, "slow"))["rateLimitingSampling"]["maxTracesPerSecond"]
        assert limited >= 1 and isinstance(limited, int)
        assert await sampling(tr, "other") == {"strategyType": "PROBABILISTIC",
                                               "probabilisticSampling": {"samplingRate": 0.5}}
        assert (await sampling(tr, "shop"))["probabilisticSampling"]["samplingRate"] == 0.1  # the first by name
        await client.resources.delete("SamplingStrategy", "a")

        async def b_rules() -> bool:
            return (await sampling(tr, "shop"))["probabilisticSampling"]["samplingRate"] == 0.2

        await wait_for(b_rules)  # before the fix: shop fell back to "*" (0.5) although b exists
    async with httpx.AsyncClient(base_url=tr.url) as http:  # the API port serves it too, as Jaeger's collector
        assert (await http.get("/api/sampling", params={"service": "shop"})).json() == await sampling(tr, "shop")


async def test_tail_sampling_baseline_is_rate_limited(tr: RunningNode) -> None:  # noqa: F811
    from mezzo.tracing.collector import Collector

    async with tr.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "TailSamplingPolicy",
                                      "metadata": {"name": "baseline"},
                                      "spec": {"decisionWait": "100ms", "slowerThan": None, "keepErrors": False,
                                               "baselinePerSecond": 1}})
    await wait_for(lambda: tr.node.service(Collector).tail is not None)
    async with httpx.AsyncClient() as http:
        for i in range(20):
            body = otlp_doc(f"{i + 1:032x}", [span("30f067aa0ba902b7", "boring", 0, 1)])
            answer = await http.post(tr.node.url("otlp") + "/v1/traces", content=body,
                                     headers={"content-type": "application/json"})
            assert answer.status_code == 200
    tail = tr.node.service(Collector).tail
    await wait_for(lambda: tail.kept + tail.dropped == 20)
    store = tr.node.service(TraceStore)
    await wait_for(lambda: store.written >= tail.kept)
    assert 1 <= tail.kept < 20 and tail.dropped > 0  # one a second, not every trace, not none


async def test_the_node_enforces_retention_from_its_settings(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from mezzo.tracing import module

    monkeypatch.setattr(module, "RETENTION_EVERY", 0.05)
    running = await start_node(tmp_path / "data", otlp_port=0, zipkin_port=0, trace_retention=3600,
                               trace_max_spans=2)
    try:
        old = span("00f067aa0ba902b1", "old", 0, 1)
        old["startTimeUnixNano"] = str((int(time.time()) - 7200) * 1_000_000_000)
        old["endTimeUnixNano"] = str((int(time.time()) - 7199) * 1_000_000_000)
        recent = [span(f"00f067aa0ba902c{i}", f"new{i}", i, 1) for i in range(3)]
        async with httpx.AsyncClient() as http:
            answer = await http.post(running.node.url("otlp") + "/v1/traces",
                                     content=otlp_doc("7" * 32, [old, *recent]),
                                     headers={"content-type": "application/json"})
            assert answer.status_code == 200
        store = running.node.service(TraceStore)

        async def trimmed() -> list[str]:
            names = sorted(s.name for s in await store.trace("7" * 32))
            return names if names == ["new1", "new2"] else []

        await wait_for(trimmed)  # too old, then beyond the count: the oldest went
    finally:
        await running.node.stop()


async def test_cli_show_pages_and_deps_lists_edges(tr: RunningNode) -> None:  # noqa: F811
    trace = "8bf92f3577b34da6a3ce929d0e0e4736"
    root = span("4000000000000001", "GET /cart", 0, 80)
    children = [span(f"40000000000001{i:02d}", f"step {i}", i + 1, 2, parent="4000000000000001")
                for i in range(5)]
    async with httpx.AsyncClient() as http:
        for service, spans in (("web", [root]), ("cart", children)):
            await http.post(tr.node.url("otlp") + "/v1/traces", content=otlp_doc(trace, spans, service=service),
                            headers={"content-type": "application/json"})
    code, shown = await mezzo(tr, "trace", "show", trace, "--limit", "3")
    assert code == 0, shown
    assert "web: GET /cart" in shown and "  cart: step 0" in shown and "cart: step 4" not in shown
    assert "3 more spans" in shown
    code, deps = await mezzo(tr, "trace", "deps", "--window", "1h")
    assert code == 0, deps
    [row] = [line for line in deps.splitlines() if "web" in line and "cart" in line]
    assert row.split()[2:4] == ["5", "0"]  # FROM TO CALLS ERRORS
    code, out = await mezzo(tr, "trace", "search", "--min-duration", "50ms")
    assert code == 0 and trace in out
    code, out = await mezzo(tr, "trace", "search", "--max-duration", "1ms")  # spans, as in Jaeger
    assert code == 0 and trace not in out
