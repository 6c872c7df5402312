"""Gateway core: route matching (host, path kinds, methods, headers, query, cookies, priority) and balancing."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


def tagged(name: str, paths: list[str], **spec: object) -> dict:
    """A route whose name comes back in the upstream's echo as the x-route header."""
    plugins = {"proxy-rewrite": {"headers": {"set": {"x-route": name}}}}
    return route(name, paths, plugins=plugins, **spec)


async def which(http: httpx.AsyncClient, method: str, path: str, **kw: object) -> str | int:
    r = await http.request(method, path, **kw)  # type: ignore[arg-type]
    if r.status_code != 200:
        return r.status_code
    return r.json()["headers"].get("x-route", "?")


async def test_matching_rules(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(
        upstream("up", a),
        tagged("exact", ["/m/exact"]),
        tagged("prefix", ["/m/*"]),
        tagged("longer-prefix", ["/m/deep/*"]),
        tagged("params", ["/m/users/{id}", "/m/orders/:order/items/{item}"]),
        tagged("regex", ["~^/re/[0-9]+$", "~^/m/re/[0-9]+$"]),
        tagged("host", ["/h/*"], hosts=["api.example.com"]),
        tagged("wildcard", ["/h/*"], hosts=["*.example.com"]),
        tagged("methods", ["/verbs"], methods=["POST", "PUT"]),
        tagged("by-header", ["/c"], headers=[{"name": "X-Version", "value": "2"}]),
        tagged("by-regex-header", ["/c"], headers=[{"name": "X-Version", "regex": "^3\\."}]),
        tagged("by-query", ["/c"], query=[{"name": "beta", "present": True}]),
        tagged("by-cookie", ["/c"], cookies=[{"name": "canary", "value": "yes"}]),
        tagged("low", ["/p/*"], priority=1),
        tagged("high", ["/p/x/*"], priority=0),
        tagged("higher", ["/p/*"], priority=5, methods=["DELETE"]),
    )
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert await which(http, "GET", "/m/exact") == "exact"
        assert await which(http, "GET", "/m/exactly") == "prefix"
        assert await which(http, "GET", "/m/deep/x") == "longer-prefix"
        assert await which(http, "GET", "/m/users/42") == "params"
        assert await which(http, "GET", "/m/users/42/more") == "prefix"  # a parameter is one segment
        assert await which(http, "GET", "/m/orders/7/items/9") == "params"
        assert await which(http, "GET", "/re/123") == "regex"
        assert await which(http, "GET", "/re/12a") == 404
        assert await which(http, "GET", "/m/re/123") == "prefix"  # a prefix is more specific than a regex
        assert await which(http, "GET", "/h/1", headers={"host": "api.example.com"}) == "host"
        assert await which(http, "GET", "/h/1", headers={"host": "API.example.com:8080"}) == "host"
        assert await which(http, "GET", "/h/1", headers={"host": "www.example.com"}) == "wildcard"
        assert await which(http, "GET", "/h/1", headers={"host": "a.b.example.com"}) == "wildcard"
        assert await which(http, "GET", "/h/1", headers={"host": "example.com"}) == 404
        assert await which(http, "GET", "/h/1", headers={"host": "other.org"}) == 404
        assert await which(http, "POST", "/verbs") == "methods"
        assert await which(http, "GET", "/verbs") == 404
        assert await which(http, "GET", "/c", headers={"x-version": "2"}) == "by-header"
        assert await which(http, "GET", "/c", headers={"x-version": "3.1"}) == "by-regex-header"
        assert await which(http, "GET", "/c?beta") == "by-query"
        assert await which(http, "GET", "/c", headers={"cookie": "a=1; canary=yes"}) == "by-cookie"
        assert await which(http, "GET", "/c", headers={"cookie": "canary=no"}) == 404
        assert await which(http, "GET", "/p/x/1") == "low"  # priority beats specificity
        assert await which(http, "DELETE", "/p/x/1") == "higher"
        r = await http.get("/nowhere")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 404
        r = await http.head("/nowhere")
        assert r.status_code == 404 and r.content == b""


async def test_paths_are_forwarded_as_sent(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("all", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        r = await http.get("/files/my%20doc%2Fx?q=a%20b&q=2")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["raw_path"] == "/files/my%20doc%2Fx" and body["query"] == "q=a%20b&q=2"
        assert body["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert body["headers"]["x-forwarded-proto"] == "http"


async def test_weighted_round_robin(gw: GatewayNode, origins) -> None:
    a, b, c = await origins(3)
    up = upstream("up", a, b, c)
    for node, weight in zip(up["spec"]["nodes"], (3, 1, 0), strict=True):
        node["weight"] = weight
    await gw.apply(up, route("rr", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        seen = Counter([(await http.get("/x")).json()["node"] for _ in range(40)])
    assert seen == {"a": 30, "b": 10}


async def test_chash_is_sticky(gw: GatewayNode, origins) -> None:
    nodes = await origins(3)
    await gw.apply(
        upstream("by-header", *nodes, loadBalancer="chash", hashOn={"on": "header", "key": "x-user"}),
        upstream("by-cookie", *nodes, loadBalancer="chash", hashOn={"on": "cookie", "key": "sid"}),
        upstream("by-arg", *nodes, loadBalancer="chash", hashOn={"on": "arg", "key": "u"}),
        upstream("by-ip", *nodes, loadBalancer="chash", hashOn={"on": "ip"}),
        route("h", ["/h"], "by-header"), route("c", ["/c"], "by-cookie"),
        route("a", ["/a"], "by-arg"), route("i", ["/i"], "by-ip"),
    )
    async with httpx.AsyncClient(base_url=gw.url) as http:
        async def node_for(path: str, **kw: object) -> str:
            return (await http.get(path, **kw)).json()["node"]  # type: ignore[arg-type]

        for path, kw in (("/h", lambda u: {"headers": {"x-user": u}}),
                         ("/c", lambda u: {"headers": {"cookie": f"sid={u}"}}),
                         ("/a", lambda u: {"params": {"u": u}})):
            users = [f"user-{i}" for i in range(30)]
            first = {u: await node_for(path, **kw(u)) for u in users}
            again = {u: await node_for(path, **kw(u)) for u in users}
            assert first == again, path
            assert len(set(first.values())) >= 2, path  # keys spread over the nodes
        assert len({await node_for("/i") for _ in range(10)}) == 1


async def test_chash_by_consumer(gw: GatewayNode, origins) -> None:
    nodes = await origins(3)
    consumers = [{"kind": "Consumer", "metadata": {"name": f"c{i}"},
                  "spec": {"credentials": {"key-auth": {"key": f"key-{i}"}}}} for i in range(20)]
    await gw.apply(upstream("up", *nodes, loadBalancer="chash", hashOn={"on": "consumer"}),
                   route("r", ["/*"], plugins={"key-auth": {}}), *consumers)
    async with httpx.AsyncClient(base_url=gw.url) as http:
        async def node_for(i: int) -> str:
            return (await http.get("/x", headers={"apikey": f"key-{i}"})).json()["node"]  # type: ignore[no-any-return]
        first = [await node_for(i) for i in range(20)]
        assert first == [await node_for(i) for i in range(20)] and len(set(first)) >= 2


async def test_chash_moves_only_the_keys_of_an_ejected_node(gw: GatewayNode, origins) -> None:
    nodes = await origins(3)
    await gw.apply(upstream("up", *nodes, loadBalancer="chash", hashOn={"on": "header", "key": "x-user"},
                            healthCheck={"passive": {"failures": 1, "ejection": "60s"}}),
                   route("h", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        users = [f"user-{i}" for i in range(40)]
        before = {u: (await http.get("/x", headers={"x-user": u})).json()["node"] for u in users}
        victim = nodes[0]
        await victim.kill()
        after = {u: (await http.get("/x", headers={"x-user": u})).json()["node"] for u in users}
    assert all(after[u] == before[u] for u in users if before[u] != victim.name)
    assert all(after[u] != victim.name for u in users)


async def test_least_conn_and_ewma(gw: GatewayNode, origins) -> None:
    a, b = await origins(2)
    await gw.apply(upstream("lc", a, b, loadBalancer="least_conn"), route("lc", ["/gate"], "lc"))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        held = [asyncio.create_task(http.get("/gate")) for _ in range(4)]
        await wait_for(lambda: a.waiting + b.waiting == 4)
        assert (a.waiting, b.waiting) == (2, 2)
        a.gate.set()
        await wait_for(lambda: a.waiting == 0)
        # a has no request in flight, b has two: the next ones go to a
        assert [(await http.get("/gate")).json()["node"] for _ in range(3)] == ["a", "a", "a"]
        b.gate.set()
        assert {r.status_code for r in await asyncio.gather(*held)} == {200}

    c, d = await origins(2)
    # c answers slowly: after one try each, EWMA sends (nearly) everything to d. 0.3 s, so that d's
    # first answer, slowed by a loaded machine, still looks faster than c's
    c.delay = 0.3
    await gw.apply(upstream("ew", c, d, loadBalancer="ewma"), route("ew", ["/slow"], "ew"))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        seen = Counter([(await http.get("/slow")).json()["node"] for _ in range(20)])
    assert seen["d"] >= 15, seen
