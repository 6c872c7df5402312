"""limit-conn: requests in flight per key; burst delayed, beyond refused; released when the response is out."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mezzo.gateway.plugins import limit_conn
from mezzo.testing.fixtures import wait_for

from .conftest import EchoServer, GatewayHandle, route_doc, upstream_doc


def _plugin(gateway: GatewayHandle) -> limit_conn.LimitConn:
    return next(p for p in gateway.runtime._plugins.values() if isinstance(p, limit_conn.LimitConn))


async def test_concurrency_limit_and_release(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"limit-conn": {"conn": 2}}))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        parked = [asyncio.create_task(http.get("/gate/1")) for _ in range(2)]
        await wait_for(lambda: upstream.waiting == 2)
        r = await http.get("/other")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        upstream.gate.set()
        assert [t.status_code for t in await asyncio.gather(*parked)] == [200, 200]
        await wait_for(lambda: not _plugin(gateway).counts)  # released in the log phase
        assert (await http.get("/other")).status_code == 200


async def test_burst_is_delayed_then_refused(gateway: GatewayHandle, upstream: EchoServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
    monkeypatch.setattr(limit_conn, "sleep", fake_sleep)
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"limit-conn": {
        "conn": 1, "burst": 1, "defaultConnDelay": "200ms", "onlyUseDefaultDelay": True, "rejectedCode": 503,
        "key": "header", "keyName": "x-user"}}))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        first = asyncio.create_task(http.get("/gate/a", headers={"x-user": "u"}))
        await wait_for(lambda: upstream.waiting == 1)
        second = asyncio.create_task(http.get("/gate/b", headers={"x-user": "u"}))
        await wait_for(lambda: upstream.waiting == 2)
        assert slept == [0.2]  # the one in the burst waited a unit
        r = await http.get("/x", headers={"x-user": "u"})
        assert r.status_code == 503
        assert (await http.get("/x", headers={"x-user": "someone-else"})).status_code == 200
        upstream.gate.set()
        assert (await first).status_code == 200 and (await second).status_code == 200
    await wait_for(lambda: not _plugin(gateway).counts)


async def test_counted_only_once_counted(gateway: GatewayHandle, upstream: EchoServer) -> None:
    """A request refused before limit-conn is not released; one answered after it is."""
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("auth", ["/auth"], plugins={"key-auth": {}, "limit-conn": {"conn": 1}}),
        route_doc("redirect", ["/moved"], plugins={"limit-conn": {"conn": 1}, "redirect": {"uri": "/new"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for _ in range(5):
            assert (await http.get("/auth")).status_code == 401
            assert (await http.get("/moved")).status_code == 302
    for plugin in gateway.runtime._plugins.values():
        if isinstance(plugin, limit_conn.LimitConn):
            assert plugin.counts == {}


async def test_client_gone_releases(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"limit-conn": {"conn": 1}}))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        parked = asyncio.create_task(http.get("/gate/1"))
        await wait_for(lambda: upstream.waiting == 1)
        assert _plugin(gateway).counts
        parked.cancel()  # the client goes away mid-request
        await wait_for(lambda: not _plugin(gateway).counts)
        upstream.gate.set()
        assert (await http.get("/x")).status_code == 200
