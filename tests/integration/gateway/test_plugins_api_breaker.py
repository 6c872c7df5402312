"""api-breaker: APISIX's circuit breaker — unhealthy statuses open it for 2, 4, 8 ... seconds; healthy ones close it."""

from __future__ import annotations

import httpx
import pytest

from mezzo.gateway.plugins import api_breaker

from .conftest import EchoServer, FakeClock, GatewayHandle, route_doc, upstream_doc


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(api_breaker, "clock", fake)
    return fake


async def test_opens_grows_and_closes(gateway: GatewayHandle, upstream: EchoServer, clock: FakeClock) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"api-breaker": {
        "breakResponseCode": 503, "maxBreakerSec": 300,
        "unhealthy": {"httpStatuses": [500, 502], "failures": 2}, "healthy": {"httpStatuses": [200], "successes": 2}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        async def call(status: int = 200) -> int:
            return (await http.get("/x", params={"status": status})).status_code

        assert await call(500) == 500
        assert await call() == 200  # a success while closed changes nothing
        assert await call(500) == 500  # the second failure: open for 2 s
        asked = upstream.hits["/x"]
        r = await http.get("/x")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert upstream.hits["/x"] == asked  # the upstream was not asked
        clock.now += 2  # half-open: requests go through again
        assert await call(500) == 500  # a third failure: the period is now 4 s, from when it opened
        r = await http.get("/x")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        clock.now += 2
        assert await call(500) == 500  # the fourth reaches the threshold again: open for 4 s from now
        assert await call() == 503
        clock.now += 3
        assert await call() == 503
        clock.now += 1
        assert await call() == 200
        assert await call() == 200  # two successes in a row: closed, counts reset
        assert await call(500) == 500
        assert await call() == 200  # one failure after the reset does not open it


async def test_period_is_capped_and_response_configurable(gateway: GatewayHandle, upstream: EchoServer,
                                                          clock: FakeClock) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"api-breaker": {
        "breakResponseCode": 599, "breakResponseBody": "try later", "maxBreakerSec": 3,
        "breakResponseHeaders": [{"key": "X-Breaker", "value": "open"}],
        "unhealthy": {"failures": 1}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for _ in range(3):  # 2 s, then 4 s capped to 3 s, then 8 s capped to 3 s
            assert (await http.get("/x", params={"status": 500})).status_code == 500
            r = await http.get("/x")
            assert r.status_code == 599 and r.text == "try later" and r.headers["x-breaker"] == "open"
            clock.now += 3
        assert (await http.get("/x")).status_code == 200


async def test_upstream_down_counts_and_routes_are_separate(gateway: GatewayHandle, upstream: EchoServer,
                                                            clock: FakeClock) -> None:
    breaker = {"breakResponseCode": 503, "unhealthy": {"httpStatuses": [502], "failures": 1}}
    await gateway.apply(
        upstream_doc("up", upstream),
        {"kind": "Upstream", "metadata": {"name": "dead"}, "spec": {"nodes": [{"host": "127.0.0.1", "port": 1}],
                                                                   "retries": 0}},
        route_doc("dead", ["/dead"], upstream="dead", plugins={"api-breaker": breaker}),
        route_doc("live", ["/live"], plugins={"api-breaker": breaker}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/dead")
        assert r.status_code == 502  # connection refused: counted as 502
        r = await http.get("/dead")
        assert r.status_code == 503 and "circuit breaker" in r.json()["detail"]
        assert (await http.get("/live")).status_code == 200
