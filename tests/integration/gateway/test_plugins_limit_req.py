"""limit-req: nginx's leaky bucket — rate, burst, delayed or nodelay, 429 with Retry-After beyond the burst."""

from __future__ import annotations

import httpx
import pytest

from mezzo.gateway.plugins import limit_req
from mezzo.gateway.plugins.limit_req import LeakyBucket

from .conftest import EchoServer, GatewayHandle, route_doc, upstream_doc


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(limit_req, "clock", fake.clock)
    monkeypatch.setattr(limit_req, "sleep", fake.sleep)
    return fake


async def test_nodelay_burst_then_429(gateway: GatewayHandle, upstream: EchoServer, fake_time: FakeTime) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"limit-req": {
        "rate": 1, "burst": 2, "nodelay": True, "key": "header", "keyName": "x-user"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for _ in range(3):  # the one at the rate, and two of burst, at once
            assert (await http.get("/x", headers={"x-user": "u1"})).status_code == 200
        r = await http.get("/x", headers={"x-user": "u1"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.headers["content-type"] == "application/problem+json"
        assert (await http.get("/x", headers={"x-user": "u2"})).status_code == 200  # another key
        fake_time.now += 1  # one request's worth leaked out
        assert (await http.get("/x", headers={"x-user": "u1"})).status_code == 200
        assert (await http.get("/x", headers={"x-user": "u1"})).status_code == 429
    assert fake_time.slept == []


async def test_requests_in_the_burst_are_delayed_to_the_rate(gateway: GatewayHandle, upstream: EchoServer,
                                                              fake_time: FakeTime) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"limit-req": {
        "rate": 10, "burst": 3, "rejectedCode": 503}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for _ in range(4):
            assert (await http.get("/x")).status_code == 200
        assert fake_time.slept == [0.1, 0.2, 0.3]  # each waits its turn at 10 a second
        r = await http.get("/x")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        fake_time.now += 10
        assert (await http.get("/x")).status_code == 200
        assert fake_time.slept == [0.1, 0.2, 0.3]


async def test_without_burst_the_rate_is_strict(gateway: GatewayHandle, upstream: EchoServer,
                                                fake_time: FakeTime) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"limit-req": {"rate": 2}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x")).status_code == 200
        assert (await http.get("/x")).status_code == 429
        fake_time.now += 0.5
        assert (await http.get("/x")).status_code == 200


def test_leaky_bucket_arithmetic() -> None:
    bucket = LeakyBucket(rate=2, burst=1, max_keys=2)
    assert bucket.take("a", 0.0) == (0.0, 0.0)
    assert bucket.take("a", 0.0) == (0.5, 0.0)  # one over the rate: waits half a second
    delay, retry = bucket.take("a", 0.0)
    assert delay < 0 and retry == 0.5  # over the burst; nothing counted
    assert bucket.take("a", 0.25) == (-1.0, 0.25)  # 1.5 in the bucket: a quarter second until it fits
    assert bucket.take("a", 0.5) == (0.5, 0.0)  # leaked back to 1
    bucket.take("b", 0.0)
    bucket.take("c", 0.0)
    assert len(bucket.states) == 2 and "a" not in bucket.states  # bounded, least recently used out
