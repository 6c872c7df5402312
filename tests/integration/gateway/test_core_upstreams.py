"""Gateway core, upstream failures: retries, timeouts, passive ejection and active checks with recovery,
a node killed under load."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import httpx

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, RawClient, get, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node(port: int) -> dict:
    return {"host": "127.0.0.1", "port": port}


async def test_retries_idempotent_only(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    dead = closed_port()
    passive = {"passive": {"failures": 100}}
    await gw.apply({"kind": "Upstream", "metadata": {"name": "up"},
                    "spec": {"nodes": [node(dead), node(a.port)], "healthCheck": passive}},
                   route("r", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        for method in ("GET", "PUT", "DELETE", "HEAD"):
            for _ in range(4):
                assert (await http.request(method, "/x")).status_code == 200, method
        statuses = Counter([(await http.post("/x", content=b"once")).status_code for _ in range(4)])
        assert statuses == {200: 2, 502: 2}  # round robin: half went to the dead node, none retried
        r = await http.post("/x")
        assert r.headers["content-type"] == "application/problem+json"
    assert a.requests == 16 + 2


async def test_timeouts(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    filler = socket.create_connection(hole.getsockname())  # the backlog is full: further SYNs go unanswered
    try:
        await gw.apply(
            {"kind": "Upstream", "metadata": {"name": "hole"},
             "spec": {"nodes": [node(hole.getsockname()[1])], "timeout": {"connect": "200ms"}}},
            upstream("slow", a, a, timeout={"read": "200ms"}, retries=2),
            {"kind": "Upstream", "metadata": {"name": "dead"}, "spec": {"nodes": [node(closed_port())]}},
            route("hole", ["/hole"], "hole"), route("slow", ["/gate"], "slow"), route("dead", ["/dead"], "dead"))
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
            assert (await http.get("/hole")).status_code == 504
            assert (await http.get("/gate")).status_code == 504
            assert (await http.get("/dead")).status_code == 502
            a.gate.set()
            await wait_for(lambda: a.waiting == 0)
        assert a.requests == 1  # a read timeout is not retried: the upstream may be acting on it
    finally:
        filler.close()
        hole.close()


async def test_passive_ejection_and_recovery(gw: GatewayNode, origins) -> None:
    a, b = await origins(2)
    a.healthy = False  # /health answers 503 on a
    await gw.apply(upstream("up", a, b, healthCheck={"passive": {"failures": 2, "ejection": "300ms"}}),
                   route("r", ["/health"]))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        statuses = [(await http.get("/health")).status_code for _ in range(12)]
        assert statuses.count(503) == 2  # a failed twice in a row, then it was skipped
        a.healthy = True

        async def a_back() -> bool:
            return (await http.get("/health")).status_code == 200 and a.requests > 2
        await wait_for(a_back)
        before = a.requests
        for _ in range(10):
            assert (await http.get("/health")).status_code == 200
        assert a.requests - before == 5  # back in the rotation


async def test_active_http_and_tcp_checks(gw: GatewayNode, origins) -> None:
    a, b = await origins(2)
    check = {"type": "http", "path": "/health", "interval": "50ms", "timeout": "500ms", "successes": 2, "failures": 2}
    await gw.apply(upstream("http", a, b, healthCheck={"active": check}),
                   upstream("tcp", a, b, healthCheck={"active": {**check, "type": "tcp"}}),
                   route("http", ["/h/*"], "http"), route("tcp", ["/t/*"], "tcp"))
    snapshot = gw.gateway.snapshot
    http_a = snapshot.upstreams["default/http"].nodes[0]
    tcp_a = snapshot.upstreams["default/tcp"].nodes[0]
    async with httpx.AsyncClient(base_url=gw.url) as http:
        a.healthy = False
        await wait_for(lambda: http_a.probe_down)
        assert {(await http.get("/h/x")).json()["node"] for _ in range(6)} == {"b"}
        assert not tcp_a.probe_down  # the port still answers
        a.healthy = True
        await wait_for(lambda: not http_a.probe_down)
        assert {(await http.get("/h/x")).json()["node"] for _ in range(6)} == {"a", "b"}

        await a.kill()
        await wait_for(lambda: tcp_a.probe_down and http_a.probe_down)
        assert {(await http.get("/t/x")).json()["node"] for _ in range(6)} == {"b"}
        await a.start()  # same port
        await wait_for(lambda: not tcp_a.probe_down and not http_a.probe_down)
        assert {(await http.get("/t/x")).json()["node"] for _ in range(6)} == {"a", "b"}


async def test_node_killed_under_load(gw: GatewayNode, origins) -> None:
    """The issue's test: a node dies under load; it is ejected and retries keep errors at <= 1%."""
    nodes = await origins(3)
    await gw.apply(upstream("up", *nodes, retries=2, healthCheck={"passive": {"failures": 3, "ejection": "30s"}}),
                   route("r", ["/*"]))
    statuses: Counter[int] = Counter()
    total, concurrency = 1500, 20
    sent = 0

    async def worker() -> None:
        nonlocal sent
        client = await RawClient.connect(gw.port)
        try:
            while sent < total:
                sent += 1
                await client.send(get("/x"))
                statuses[(await client.response()).status] += 1
        finally:
            client.close()

    async def killer() -> None:
        await wait_for(lambda: sent >= total // 4)
        await nodes[1].kill()

    await asyncio.gather(killer(), *(worker() for _ in range(concurrency)))
    errors = total - statuses[200]
    assert sum(statuses.values()) == total
    assert errors <= total * 0.01, statuses
    victim = gw.gateway.snapshot.upstreams["default/up"].nodes[1]
    assert victim.ejected_until > 0
    requests_before = nodes[1].requests
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert {(await http.get("/x")).json()["node"] for _ in range(10)} == {"a", "c"}
    assert nodes[1].requests == requests_before


class _Forgetful:
    """An upstream that answers the first request on each connection (keep-alive) and closes the
    connection under the next one without a byte: the pooled connection the gateway holds is stale."""

    def __init__(self) -> None:
        self.connections = 0
        self.answered = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.1)  # slow enough for concurrent requests to open connections of their own
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            self.answered += 1
            await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_stale_pooled_connection_is_retried_on_a_new_one(gw: GatewayNode) -> None:
    """A single-node upstream whose pooled connections were all closed by the upstream: each request
    goes to the same node again on a new connection (not to another pooled one, not a 503 for want
    of another node), on the fast path and on the path of routes with asynchronous plugins."""
    upstream_server = _Forgetful()
    port = await upstream_server.start()
    await gw.apply({"kind": "Upstream", "metadata": {"name": "up"}, "spec": {"nodes": [node(port)], "retries": 0}},
                   route("fast", ["/fast"]),
                   route("slow", ["/slow"], plugins={"limit-req": {"rate": 1000, "burst": 1000, "nodelay": True}}))
    try:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            for path in ("/fast", "/slow"):
                for _ in range(2):  # two connections in the pool, both to be dropped under their next request
                    answers = await asyncio.gather(http.get(path), http.get(path))
                    assert [a.status_code for a in answers] == [200, 200]
                for _ in range(3):
                    answer = await http.get(path)
                    assert answer.status_code == 200, (path, answer.text)
    finally:
        assert upstream_server.server is not None
        upstream_server.server.close()
