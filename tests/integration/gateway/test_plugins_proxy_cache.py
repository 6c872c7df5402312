"""proxy-cache: MISS/HIT/EXPIRED/BYPASS, Cache-Control and Expires from the upstream, Vary, bounds."""

from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest

from mezzo.gateway.plugins import proxy_cache

from .conftest import EchoServer, FakeClock, GatewayHandle, route_doc, upstream_doc


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(proxy_cache, "clock", fake)
    return fake


async def _setup(gateway: GatewayHandle, upstream: EchoServer, **conf: object) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"proxy-cache": conf}))


async def test_miss_hit_expired(gateway: GatewayHandle, upstream: EchoServer, clock: FakeClock) -> None:
    await _setup(gateway, upstream)
    params = {"set-cache-control": "max-age=60", "set-etag": '"v1"'}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        first = await http.get("/c", params=params)
        assert first.status_code == 200 and first.headers["x-cache-status"] == "MISS"
        clock.now += 5
        hit = await http.get("/c", params=params)
        assert hit.headers["x-cache-status"] == "HIT" and hit.content == first.content
        assert hit.headers["age"] == "5" and hit.headers["etag"] == '"v1"'
        assert hit.headers["content-type"] == "application/json" and hit.headers["x-server"] == "a"
        assert int(hit.headers["content-length"]) == len(first.content)
        head = await http.head("/c", params=params)
        assert head.status_code == 200 and head.headers["x-cache-status"] == "HIT" and head.content == b""
        assert upstream.hits["/c"] == 1
        clock.now += 60
        r = await http.get("/c", params=params)
        assert r.headers["x-cache-status"] == "EXPIRED" and r.json()["n"] == 2
        assert (await http.get("/c", params=params)).headers["x-cache-status"] == "HIT"
        other = await http.get("/c", params={**params, "page": "2"})  # another key
        assert other.headers["x-cache-status"] == "MISS"


async def test_what_is_not_stored(gateway: GatewayHandle, upstream: EchoServer, clock: FakeClock) -> None:
    await _setup(gateway, upstream)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        async def twice(path: str, method: str = "GET", **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
            return [(await http.request(method, path, **kwargs)).headers.get("x-cache-status", "-") for _ in range(2)]

        assert await twice("/a", params={"set-cache-control": "no-store"}) == ["MISS", "MISS"]
        assert await twice("/b", params={"set-cache-control": "private, max-age=60"}) == ["MISS", "MISS"]
        assert await twice("/c", params={"set-cache-control": "max-age=0"}) == ["MISS", "MISS"]
        assert await twice("/d", params={"status": "500"}) == ["MISS", "MISS"]
        assert await twice("/e", params={"set-set-cookie": "sid=1"}) == ["MISS", "MISS"]
        assert await twice("/f", params={"set-vary": "*"}) == ["MISS", "MISS"]
        assert await twice("/g", method="POST") == ["-", "-"]
        past = formatdate(time.time() - 10, usegmt=True)
        assert await twice("/h", params={"set-expires": past}) == ["MISS", "MISS"]
        # a response to an authorized request only when the upstream says it is public
        auth = {"authorization": "Bearer t"}
        assert await twice("/i", headers=auth, params={"set-cache-control": "max-age=60"}) == ["MISS", "MISS"]
        assert await twice("/j", headers=auth, params={"set-cache-control": "public, max-age=60"}) == ["MISS", "HIT"]
        # without Cache-Control: cacheTtl; and a 404 is cached too
        assert await twice("/k") == ["MISS", "HIT"]
        assert await twice("/l", params={"status": "404"}) == ["MISS", "HIT"]
        clock.now += 301
        assert (await http.get("/k")).headers["x-cache-status"] == "EXPIRED"


async def test_bypass_no_cache_and_vary(gateway: GatewayHandle, upstream: EchoServer, clock: FakeClock) -> None:
    await _setup(gateway, upstream, cacheBypass=["$arg_fresh"], noCache=["$http_x_no_store"], cacheTtl="10s",
                 cacheControl=False, hideCacheHeaders=True)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/p", params={"set-cache-control": "no-store"})  # ignored: cacheControl false
        assert r.headers["x-cache-status"] == "MISS" and "cache-control" not in r.headers
        assert (await http.get("/p", params={"set-cache-control": "no-store"})).headers["x-cache-status"] == "HIT"

        assert (await http.get("/q", headers={"x-no-store": "1"})).headers["x-cache-status"] == "MISS"
        assert (await http.get("/q")).headers["x-cache-status"] == "MISS"  # the first was not stored
        assert (await http.get("/q")).headers["x-cache-status"] == "HIT"
        r = await http.get("/q", params={"fresh": "1"})
        assert r.headers["x-cache-status"] == "BYPASS"
        assert (await http.get("/q", params={"fresh": "0"})).headers["x-cache-status"] == "MISS"  # "0" is unset

        lang = {"set-vary": "Accept-Language"}
        en = await http.get("/v", params=lang, headers={"accept-language": "en"})
        de = await http.get("/v", params=lang, headers={"accept-language": "de"})
        assert en.headers["x-cache-status"] == "MISS" and de.headers["x-cache-status"] == "MISS"
        again = await http.get("/v", params=lang, headers={"accept-language": "en"})
        assert again.headers["x-cache-status"] == "HIT" and again.json()["n"] == en.json()["n"]
        again = await http.get("/v", params=lang, headers={"accept-language": "de"})
        assert again.headers["x-cache-status"] == "HIT" and again.json()["n"] == de.json()["n"]


async def test_size_bounds(gateway: GatewayHandle, upstream: EchoServer, clock: FakeClock) -> None:
    await _setup(gateway, upstream, maxEntrySize=600, maxSize=2000)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        big = {"pad": "x" * 700}
        assert [(await http.get("/big", params=big)).headers["x-cache-status"] for _ in range(2)] == ["MISS", "MISS"]
        for i in range(6):  # small entries of ~400 bytes each: the oldest go
            assert (await http.get(f"/s{i}")).headers["x-cache-status"] == "MISS"
        assert (await http.get("/s5")).headers["x-cache-status"] == "HIT"
        assert (await http.get("/s0")).headers["x-cache-status"] == "MISS"
    plugin = next(p for p in gateway.runtime._plugins.values() if isinstance(p, proxy_cache.ProxyCache))
    assert plugin.store.size <= 2000
