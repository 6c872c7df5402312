"""prometheus: counted in plain dicts per request, shown on the API port's /metrics at scrape time."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mezzo.gateway.plugins.prometheus import BUCKETS, Counts

from . import core_fixtures
from .core_fixtures import GatewayNode, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_requests_latency_and_bytes_on_metrics(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a),
                   route("named", ["/named/*"], plugins={"prometheus": {},
                                                         "proxy-rewrite": {"regexUri": ["^/named", ""]}}),
                   route("byref", ["/byref/*"], plugins={"prometheus": {"preferName": False}}),
                   route("unmeasured", ["/other/*"]))
    node = f"127.0.0.1:{a.port}"
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        sizes = [len((await http.get("/named/big", params={"n": n})).content) for n in (10, 20, 30)]
        assert (await http.get("/named/status/404")).status_code == 404
        assert (await http.get("/byref/x")).status_code == 200
        assert (await http.get("/other/x")).status_code == 200
    async with httpx.AsyncClient(base_url=gw.running.url, timeout=10) as api:
        text = (await api.get("/metrics")).text
    samples = _samples(text)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("mezzo_gateway_requests_total", route="named", upstream="up", node=node, code="200") == 3
    assert value("mezzo_gateway_requests_total", route="named", upstream="up", node=node, code="404") == 1
    assert value("mezzo_gateway_requests_total", route="default/byref", upstream="up", node=node, code="200") == 1
    assert not any(dict(labels).get("route") == "unmeasured" for _, labels in samples)
    assert value("mezzo_gateway_response_bytes_total", route="named", upstream="up") >= sum(sizes)
    count = value("mezzo_gateway_request_duration_seconds_count", route="named", upstream="up")
    assert count == 4
    assert value("mezzo_gateway_request_duration_seconds_bucket", route="named", upstream="up", le="+Inf") == 4
    assert value("mezzo_gateway_request_duration_seconds_sum", route="named", upstream="up") > 0
    buckets = [value("mezzo_gateway_request_duration_seconds_bucket", route="named", upstream="up", le=str(b))
               for b in BUCKETS]
    assert all(b is not None for b in buckets) and buckets == sorted(buckets)  # cumulative


def test_histogram_buckets_are_le_and_cumulative() -> None:
    counts = Counts()
    for seconds in (0.0005, 0.001, 0.003, 20.0):  # 0.001 is on a bound: it counts in le="0.001"
        counts.add("r", "u", "n", 200, seconds, 0)
    counts.add("r", "u", "n", 502, 0.002, 7)
    families = {f.name: f for f in counts.collect()}
    requests = {s.labels["code"]: s.value for s in families["mezzo_gateway_requests"].samples}
    assert requests == {"200": 4, "502": 1}
    latency = {s.labels.get("le"): s.value for s in families["mezzo_gateway_request_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    assert latency["0.001"] == 2 and latency["0.002"] == 3 and latency["0.005"] == 4
    assert latency["10.0"] == 4 and latency["+Inf"] == 5
    sent = families["mezzo_gateway_response_bytes"].samples
    assert [(s.name, s.value) for s in sent] == [("mezzo_gateway_response_bytes_total", 7)]
