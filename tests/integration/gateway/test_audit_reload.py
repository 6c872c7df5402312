"""Audit: ``apply`` while requests are in flight — nothing dropped under load, a request on a node
that a change removes finishes there, and that node's connection is not left open afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, RawClient, get, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


async def test_a_request_on_a_removed_node_finishes_and_its_connection_goes(gw: GatewayNode, origins) -> None:
    a, b = await origins(2)
    assert a.server is not None
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        in_flight = asyncio.create_task(http.get("/gate"))
        await wait_for(lambda: a.waiting == 1)
        await gw.apply(upstream("up", b))  # the upstream's only node is replaced while a works
        assert (await http.get("/x")).json()["node"] == "b"
        a.gate.set()
        r = await in_flight
        assert r.status_code == 200 and r.json()["node"] == "a"
    # the connection to a went back to a node no configuration has any more: it must be closed,
    # not kept in a pool nobody will take from or sweep
    await wait_for(lambda: not a.server.server_state.connections)


async def test_a_deleted_upstream_lets_its_in_flight_request_finish(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        in_flight = asyncio.create_task(http.get("/gate"))
        await wait_for(lambda: a.waiting == 1)
        await gw.delete("Upstream", "up")
        r = await http.get("/x")
        assert r.status_code == 502 and r.headers["content-type"] == "application/problem+json"  # no upstream now
        a.gate.set()
        assert (await in_flight).status_code == 200


async def test_nothing_is_dropped_while_changes_are_applied_under_load(gw: GatewayNode, origins) -> None:
    """Keep-alive clients send without pause while the route is moved between upstreams, gains and
    loses plugins, and the upstreams change their nodes: every request is answered 200."""
    a, b, c = await origins(3)
    await gw.apply(upstream("one", a, b), upstream("two", c), route("r", ["/*"], "one"))
    statuses: Counter[int] = Counter()
    done = asyncio.Event()

    async def client() -> None:
        raw = await RawClient.connect(gw.port)
        try:
            while not done.is_set():
                await raw.send(get("/x"))
                statuses[(await raw.response()).status] += 1
        finally:
            raw.close()

    clients = [asyncio.create_task(client()) for _ in range(6)]
    try:
        changes = [
            [route("r", ["/*"], "two")],
            [route("r", ["/*"], "one", plugins={"proxy-rewrite": {"headers": {"set": {"x-v": "1"}}}})],
            [upstream("one", b)],
            [upstream("two", a, c), route("r", ["/*"], "two")],
            [route("r", ["/*"], "one", plugins={"limit-count": {"count": 100000, "window": "60s"}})],
            [upstream("one", a, b, c)],
        ]
        for docs in changes * 2:
            before = sum(statuses.values())
            await gw.apply(*docs)
            await wait_for(lambda: sum(statuses.values()) > before + 20)  # noqa: B023
    finally:
        done.set()
        await asyncio.gather(*clients)
    assert set(statuses) == {200}, statuses


async def test_a_resource_that_fails_to_build_is_left_out_and_the_others_still_change(
        gw: GatewayNode, origins, monkeypatch) -> None:
    """A route or upstream whose build raises (a defect, or data an older version stored) used to
    fail the whole configuration build, so the gateway kept its previous configuration and ignored
    every later change. Now that one resource is left out of service and logged; the rest changes."""
    import mezzo.gateway.runtime as runtime

    a, b = await origins(2)
    compile_route, balancer = runtime.compile_route, runtime.Gateway._balancer

    def failing_compile(namespace: str, name: str, spec):  # type: ignore[no-untyped-def]
        if name == "bad":
            raise RuntimeError("cannot compile this one")
        return compile_route(namespace, name, spec)

    def failing_balancer(self, ref: str, spec, live):  # type: ignore[no-untyped-def]
        if ref == "default/bad-up":
            raise RuntimeError("cannot balance this one")
        return balancer(self, ref, spec, live)

    monkeypatch.setattr(runtime, "compile_route", failing_compile)
    monkeypatch.setattr(runtime.Gateway, "_balancer", failing_balancer)
    await gw.apply(upstream("up", a), route("good", ["/good/*"]))
    await gw.apply(route("bad", ["/bad/*"]), upstream("bad-up", b), route("to-bad-up", ["/to-bad/*"], "bad-up"),
                   upstream("up", b))  # and a change to a sound resource, in the same apply
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        await wait_for(lambda: gw.gateway.broken.keys() == {"Route/default/bad", "Upstream/default/bad-up"})
        r = await http.get("/good/x")
        assert r.status_code == 200 and r.json()["node"] == "b"  # the change to "up" took effect
        assert (await http.get("/bad/x")).status_code == 404
        assert (await http.get("/to-bad/x")).status_code == 502  # its upstream is out of service
    assert gw.gateway.broken["Route/default/bad"] == "RuntimeError: cannot compile this one"
