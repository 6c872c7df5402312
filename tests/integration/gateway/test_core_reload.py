"""Gateway core, live configuration: a change applied while a request is in flight, and a Redis outage
under limit-count (degrade open keeps serving)."""

from __future__ import annotations

import asyncio
import socket

import httpx

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


async def test_hot_reload_keeps_in_flight_requests(gw: GatewayNode, origins) -> None:
    a, b = await origins(2)
    await gw.apply(upstream("one", a), upstream("two", b), route("r", ["/*"], "one"))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        in_flight = asyncio.create_task(http.get("/gate"))
        await wait_for(lambda: a.waiting == 1)
        # the route moves to another upstream and gains a plugin, while the request waits on a
        await gw.apply(route("r", ["/*"], "two", plugins={"proxy-rewrite": {"headers": {"set": {"x-v": "2"}}}}))
        r = await http.get("/x")
        assert r.json()["node"] == "b" and r.json()["headers"]["x-v"] == "2"
        assert not in_flight.done()
        a.gate.set()
        r = await in_flight
        assert r.status_code == 200 and r.json()["node"] == "a" and "x-v" not in r.json()["headers"]
        # a delete takes effect too
        await gw.delete("Route", "r")
        assert (await http.get("/x")).status_code == 404


async def test_unchanged_plugins_keep_their_state_across_reloads(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    limit = {"limit-count": {"count": 3, "window": "60s"}}
    await gw.apply(upstream("up", a), route("r", ["/r/*"], plugins=limit))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert [(await http.get("/r/x")).status_code for _ in range(2)] == [200, 200]
        await gw.apply(route("other", ["/o/*"]))  # an unrelated change
        assert [(await http.get("/r/x")).status_code for _ in range(2)] == [200, 429]


async def test_redis_down_limit_count_degrades_open(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    redis = f"redis://127.0.0.1:{port}/0"
    conf = {"count": 1, "window": "60s", "policy": "redis", "redisUrl": redis}
    await gw.apply(upstream("up", a),
                   route("open", ["/open/*"], plugins={"limit-count": {**conf, "degrade": "open"}}),
                   route("closed", ["/closed/*"], plugins={"limit-count": {**conf, "degrade": "closed"}}))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        assert [(await http.get("/open/x")).status_code for _ in range(5)] == [200] * 5
        assert (await http.get("/closed/x")).status_code == 503  # the limiter really is Redis
