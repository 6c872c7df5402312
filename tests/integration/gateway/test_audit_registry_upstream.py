"""Audit: an Upstream whose nodes come from a registry service (``service: NAME``).

The gateway takes the service's healthy instances with their weights, and follows the registry:
registrations, deregistrations, failing checks, lapsed TTLs (a crashed process) and the SDK's
``registered`` ASGI helper starting and stopping all change where requests go."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from mezzo.sdk.registry import registered
from mezzo.testing.fixtures import start_node, wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, route, start_gateway

origins = core_fixtures.origins  # fixture
FAST_CHECK = {"http": "/health", "interval": "100ms", "timeout": "1s", "failures": 1, "successes": 1}


@pytest.fixture
async def gwr(tmp_path: Path) -> AsyncIterator[GatewayNode]:
    """A node running the gateway next to the registry (and the API)."""
    node = await start_gateway(tmp_path / "data", targets=["gateway", "registry", "api"])
    try:
        yield node
    finally:
        await node.running.node.stop()


def service_upstream(name: str, service: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "Upstream", "metadata": {"name": name}, "spec": {"service": service, **spec}}


def ports(gw: GatewayNode, upstream: str = "up") -> list[int]:
    balancer = gw.gateway.snapshot.upstreams.get(f"default/{upstream}")
    return sorted(n.port for n in balancer.nodes) if balancer is not None else []


def weight(gw: GatewayNode, port: int, upstream: str = "up") -> float | None:
    balancer = gw.gateway.snapshot.upstreams[f"default/{upstream}"]
    return next((n.weight for n in balancer.nodes if n.port == port), None)


async def answered_by(http: httpx.AsyncClient, count: int, **kw: Any) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        r = await http.get("/x", **kw)
        seen[r.json()["node"] if r.status_code == 200 else str(r.status_code)] += 1
    return seen


async def test_nodes_and_weights_follow_the_registry(gwr: GatewayNode, origins) -> None:
    a, b, c = await origins(3)
    await gwr.apply(service_upstream("up", "shop"), route("r", ["/*"]))
    async with gwr.running.client() as sdk, httpx.AsyncClient(base_url=gwr.url) as http:
        assert (await http.get("/x")).status_code == 503  # the service has no instance yet

        await sdk.registry.register("shop", host="127.0.0.1", port=a.port, weight=3, zone="z1", version="1.0",
                                    metadata={"team": "core"})
        await sdk.registry.register("shop", host="127.0.0.1", port=b.port, weight=1)
        await wait_for(lambda: ports(gwr) == sorted([a.port, b.port]))
        assert await answered_by(http, 40) == {"a": 30, "b": 10}  # the registry's weights, 3:1

        # weight 0 takes an instance out of rotation (the registry's documented way to drain one)
        await sdk.registry.register("shop", host="127.0.0.1", port=a.port, weight=0, zone="z1", version="1.0",
                                    metadata={"team": "core"})
        await wait_for(lambda: weight(gwr, a.port) == 0)
        assert await answered_by(http, 6) == {"b": 6}

        await sdk.registry.deregister("shop", f"127.0.0.1:{b.port}")
        await sdk.registry.deregister("shop", f"127.0.0.1:{a.port}")
        await wait_for(lambda: ports(gwr) == [])
        assert (await http.get("/x")).status_code == 503

        # an instance whose active check fails is registered but not routed to
        await sdk.registry.register("shop", id="c", host="127.0.0.1", port=c.port, check=FAST_CHECK)
        await wait_for(lambda: ports(gwr) == [c.port])  # critical until its first probe passes
        assert await answered_by(http, 3) == {"c": 3}
        c.healthy = False
        await wait_for(lambda: ports(gwr) == [])
        assert (await http.get("/x")).status_code == 503
        c.healthy = True
        await wait_for(lambda: ports(gwr) == [c.port])


async def test_a_lapsed_instance_leaves_the_upstream(gwr: GatewayNode, origins) -> None:
    """An instance whose process died (no more heartbeats) stops getting traffic once its TTL runs
    out; one kept alive by the SDK's heartbeats stays."""
    alive, crashed = await origins(2)
    await gwr.apply(service_upstream("up", "shop"), route("r", ["/*"]))
    async with gwr.running.client() as sdk, httpx.AsyncClient(base_url=gwr.url) as http:
        async with sdk.registry.registration("shop", host="127.0.0.1", port=alive.port, ttl=1):
            await sdk.registry.register("shop", host="127.0.0.1", port=crashed.port, ttl=1)  # never renewed
            await wait_for(lambda: ports(gwr) == sorted([alive.port, crashed.port]))
            await wait_for(lambda: ports(gwr) == [alive.port], timeout=15)
            assert await answered_by(http, 4) == {"a": 4}
            assert [i.port for i in await sdk.registry.instances("shop")] == [alive.port]
        await wait_for(lambda: ports(gwr) == [])  # deregistered when the block ends


async def test_chash_over_a_registry_service(gwr: GatewayNode, origins) -> None:
    """Registry weights are floats (1.0, 0.5): the hash ring must take them, and a failing build
    must not freeze the configuration for every later change."""
    nodes = await origins(3)
    await gwr.apply(service_upstream("up", "shop", loadBalancer="chash", hashOn={"on": "header", "key": "x-user"}),
                    route("r", ["/*"]))
    async with gwr.running.client() as sdk, httpx.AsyncClient(base_url=gwr.url) as http:
        for origin, weight in zip(nodes, (1.0, 2.5, 0.5), strict=True):
            await sdk.registry.register("shop", host="127.0.0.1", port=origin.port, weight=weight)
        await wait_for(lambda: ports(gwr) == sorted(o.port for o in nodes))
        users = [f"user-{i}" for i in range(40)]
        first = {u: (await http.get("/x", headers={"x-user": u})).json()["node"] for u in users}
        again = {u: (await http.get("/x", headers={"x-user": u})).json()["node"] for u in users}
        assert first == again and len(set(first.values())) >= 2
        await gwr.apply(route("other", ["/other/*"]))  # later changes still take effect
        assert (await http.get("/other/x", headers={"x-user": "u"})).status_code == 200


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def test_an_asgi_app_registered_by_the_sdk_gets_traffic_while_it_runs(gwr: GatewayNode) -> None:
    """``registered(app)`` under a real server: routed to once started, out of the upstream once stopped."""
    app = Starlette(routes=[Route("/{path:path}", lambda request: JSONResponse({"node": "app"}))])
    sock = _bound_socket()
    port = sock.getsockname()[1]
    await gwr.apply(service_upstream("up", "orders"), route("r", ["/*"]))
    async with gwr.running.client() as sdk, httpx.AsyncClient(base_url=gwr.url) as http:
        wrapped = registered(app, service="orders", host="127.0.0.1", port=port, ttl=5, client=sdk, version="2.0")
        server = uvicorn.Server(uvicorn.Config(wrapped, lifespan="on", log_config=None, access_log=False))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await wait_for(lambda: server.started)
            await wait_for(lambda: ports(gwr) == [port])
            assert await answered_by(http, 3) == {"app": 3}
            [instance] = await sdk.registry.instances("orders")
            assert instance.version == "2.0" and instance.ttl == 5
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)
            sock.close()
        assert await sdk.registry.instances("orders") == []  # deregistered on shutdown
        await wait_for(lambda: ports(gwr) == [])
        assert (await http.get("/x")).status_code == 503


class HostEcho:
    """An upstream on the IPv6 loopback that answers with the Host header it was sent."""

    def __init__(self) -> None:
        self.hosts: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "::1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                host = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                            if line.lower().startswith(b"host:"))
                self.hosts.append(host)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(host), host))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_an_ipv6_instance_gets_a_valid_host_header(gwr: GatewayNode) -> None:
    """A registry instance on an IPv6 address: with ``passHost: node`` the upstream's Host is
    ``[::1]:port`` (RFC 9110), and the active check's probe names it the same way."""
    echo = HostEcho()
    port = await echo.start()
    try:
        await gwr.apply(service_upstream("up", "v6", passHost="node", healthCheck={"active": {
            "type": "http", "path": "/health", "interval": "100ms", "failures": 1, "successes": 1}}),
            route("r", ["/*"]))
        async with gwr.running.client() as sdk, httpx.AsyncClient(base_url=gwr.url) as http:
            await sdk.registry.register("v6", host="::1", port=port)
            await wait_for(lambda: ports(gwr) == [port])
            r = await http.get("/x")
            assert r.status_code == 200 and r.text == f"[::1]:{port}"
            await wait_for(lambda: len(echo.hosts) >= 2)
            assert set(echo.hosts) == {f"[::1]:{port}".encode(), b"[::1]"}  # the request's, the probe's
    finally:
        assert echo.server is not None
        echo.server.close()


async def test_a_gateway_node_without_the_registry_module_follows_the_shared_registry(
        postgres_url: str, tmp_path: Path, origins) -> None:
    (a,) = await origins(1)
    registry = await start_node(tmp_path / "registry", store=postgres_url, targets=["registry", "api"])
    edge = await start_gateway(tmp_path / "edge", store=postgres_url, targets=["gateway", "api"])
    try:
        await edge.apply(service_upstream("up", "shop"), route("r", ["/*"]))
        async with registry.client() as sdk:
            await sdk.registry.register("shop", host="127.0.0.1", port=a.port)
        await wait_for(lambda: ports(edge) == [a.port], timeout=5)
    finally:
        await edge.running.node.stop()
        await registry.node.stop()
