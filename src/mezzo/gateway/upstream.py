"""Upstream side of the proxy: keep-alive connection pools, load balancers, health.

A node is skipped while ejected: by the passive check (``failures`` connect errors, timeouts or
listed statuses in a row eject it for ``ejection`` seconds) or by the active check (``failures``
failed probes until ``successes`` pass again). When every node is ejected the balancer uses all
of them rather than fail everything (Envoy's panic mode), so a wrong check cannot take a whole
service down.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import httptools
import structlog

from mezzo.gateway.model import UpstreamSpec

log = structlog.get_logger("mezzo.gateway")
IDLE_TIMEOUT = 60.0  # an idle pooled connection is closed after this


class Sink(Protocol):
    """Where an upstream connection delivers the response of the current exchange."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], conn: UpstreamConnection) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_error(self, exc: BaseException) -> None: ...
    def on_tunnel(self, data: bytes) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_idle_timer",
        "_writable",
        "closed",
        "head_only",
        "headers",
        "keep_alive",
        "node",
        "on_drain",
        "parser",
        "response_started",
        "sink",
        "transport",
        "tunnel",
    )

    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.closed = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.tunnel = False
        self.head_only = False
        self.response_started = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self.on_drain: Callable[[], None] | None = None  # resumes a client paused for our sake

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            if self.sink is not None:
                self.sink.on_tunnel(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.tunnel = True
            rest = data[upgrade.args[0]:]
            if rest and self.sink is not None:
                self.sink.on_tunnel(rest)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.sink is not None:
            self._fail(exc or ConnectionResetError("upstream closed the connection"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("upstream closed the connection"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None
        if self.on_drain is not None:
            self.on_drain()

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers = []
        self.response_started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.sink is not None:
            self.sink.on_head(self.parser.get_status_code(), self.headers, self)
        if self.head_only:  # a HEAD answer has no body, whatever its headers say: end it here, do not reuse
            self.keep_alive = False
            self._end()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self.head_only:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if not self.head_only:
            self._end()

    def _end(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_end()

    def _fail(self, exc: BaseException) -> None:
        sink, self.sink = self.sink, None
        self.keep_alive = False
        if sink is not None:
            sink.on_error(exc)
        if self.transport is not None:
            self.transport.close()

    # pool use
    def start(self, sink: Sink, head: bytes, body: bytes | None, head_only: bool) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.sink = sink
        self.head_only = head_only
        self.response_started = False
        assert self.transport is not None
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class NodeState:
    """One upstream node: its pool, load, latency and health."""

    __slots__ = (
        "active",
        "check_fail",
        "check_ok",
        "current_weight",
        "ejected_until",
        "ewma",
        "fails",
        "host",
        "idle",
        "keepalive",
        "key",
        "port",
        "probe_down",
        "weight",
        "zone",
    )

    def __init__(self, host: str, port: int, weight: int, zone: str | None, keepalive: int) -> None:
        self.host, self.port, self.weight, self.zone = host, port, weight, zone
        self.key = f"{host}:{port}"
        self.idle: list[UpstreamConnection] = []
        self.active = 0
        self.ewma = 0.0
        self.fails = 0
        self.ejected_until = 0.0
        self.check_ok = 0
        self.check_fail = 0
        self.probe_down = False
        self.current_weight = 0
        self.keepalive = keepalive

    def healthy(self, now: float) -> bool:
        return not self.probe_down and now >= self.ejected_until and self.weight > 0

    async def connect(self, timeout: float) -> UpstreamConnection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                                         timeout)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or not conn.keep_alive or conn.tunnel or len(self.idle) >= self.keepalive:
            conn.close()
            return
        self.idle.append(conn)
        conn._idle_timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._expire, conn)

    def _expire(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        conn.close()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


# balancers ----------------------------------------------------------------------------------

def pick_roundrobin(nodes: list[NodeState], _: Any) -> NodeState:
    """Smooth weighted round robin (nginx's): spreads a node's turns evenly among the others'."""
    total = 0
    best: NodeState | None = None
    for node in nodes:
        node.current_weight += node.weight
        total += node.weight
        if best is None or node.current_weight > best.current_weight:
            best = node
    assert best is not None
    best.current_weight -= total
    return best


def pick_least_conn(nodes: list[NodeState], _: Any) -> NodeState:
    return min(nodes, key=lambda n: (n.active + 1) / n.weight)


def pick_ewma(nodes: list[NodeState], _: Any) -> NodeState:
    return min(nodes, key=lambda n: (n.ewma or 0.001) * (n.active + 1) / n.weight)


class HashRing:
    """Ketama-style consistent hashing: 160 points per unit of weight, md5 of ``host:port-i``."""

    def __init__(self, nodes: list[NodeState]) -> None:
        points: list[tuple[int, NodeState]] = []
        for node in nodes:
            for i in range(40 * max(node.weight, 1)):
                digest = hashlib.md5(f"{node.key}-{i}".encode()).digest()
                for j in range(4):
                    points.append((int.from_bytes(digest[j * 4:j * 4 + 4], "little"), node))
        points.sort(key=lambda p: p[0])
        self.hashes = [p[0] for p in points]
        self.nodes = [p[1] for p in points]

    def lookup(self, key: str, usable: Callable[[NodeState], bool]) -> NodeState | None:
        if not self.hashes:
            return None
        digest = hashlib.md5(key.encode()).digest()
        start = bisect.bisect(self.hashes, int.from_bytes(digest[:4], "little")) % len(self.hashes)
        for i in range(len(self.hashes)):  # walk on past ejected nodes
            node = self.nodes[(start + i) % len(self.nodes)]
            if usable(node):
                return node
        return None


class Balancer:
    """The nodes of one upstream and how to choose among them."""

    def __init__(self, name: str, spec: UpstreamSpec, nodes: list[NodeState]) -> None:
        self.name, self.spec, self.nodes = name, spec, nodes
        self.ring = HashRing(nodes) if spec.load_balancer == "chash" else None
        self._pick = {"roundrobin": pick_roundrobin, "least_conn": pick_least_conn, "ewma": pick_ewma,
                      "chash": pick_roundrobin}[spec.load_balancer]

    def pick(self, hash_key: str | None, tried: list[NodeState] | None) -> NodeState | None:
        now = time.monotonic()
        if self.ring is not None and hash_key is not None:
            found = self.ring.lookup(hash_key, lambda n: n.healthy(now) and (not tried or n not in tried))
            if found is not None:
                return found
        candidates = [n for n in self.nodes if n.healthy(now) and (not tried or n not in tried)]
        if not candidates:  # panic: every node looks down; try them anyway
            candidates = [n for n in self.nodes if n.weight > 0 and (not tried or n not in tried)]
        if not candidates:
            return None
        return candidates[0] if len(candidates) == 1 else self._pick(candidates, hash_key)

    def report(self, node: NodeState, ok: bool, latency: float | None = None) -> None:
        """Passive health: count failures in a row; eject at the threshold."""
        if latency is not None:
            node.ewma = latency if node.ewma == 0 else node.ewma * 0.8 + latency * 0.2
        passive = self.spec.health_check.passive
        if ok or passive is None:
            node.fails = 0
            return
        node.fails += 1
        if node.fails >= passive.failures:
            node.fails = 0
            node.ejected_until = time.monotonic() + passive.ejection
            log.warning("upstream node ejected", upstream=self.name, node=node.key, seconds=passive.ejection)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


async def run_active_checks(balancer: Balancer) -> None:
    """Probe every node at the interval; flip ``probe_down`` after enough failures or successes."""
    check = balancer.spec.health_check.active
    assert check is not None
    while True:
        await asyncio.gather(*(_probe(balancer, node) for node in balancer.nodes), return_exceptions=True)
        await asyncio.sleep(check.interval)


async def _probe(balancer: Balancer, node: NodeState) -> None:
    check = balancer.spec.health_check.active
    assert check is not None
    ok = False
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(node.host, node.port), check.timeout)
        if check.type == "tcp":
            ok = True
        else:
            writer.write(f"GET {check.path} HTTP/1.1\r\nhost: {node.host}\r\nconnection: close\r\n"
                         f"user-agent: mezzo-health-check\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), check.timeout)
            parts = line.split()
            ok = len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) in check.healthy_statuses
    except (OSError, TimeoutError, ValueError):
        ok = False
    finally:
        if writer is not None:
            writer.close()
    if ok:
        node.check_fail = 0
        node.check_ok += 1
        if node.probe_down and node.check_ok >= check.successes:
            node.probe_down = False
            log.info("upstream node healthy again", upstream=balancer.name, node=node.key)
    else:
        node.check_ok = 0
        node.check_fail += 1
        if not node.probe_down and node.check_fail >= check.failures:
            node.probe_down = True
            log.warning("upstream node failed its health check", upstream=balancer.name, node=node.key)


def crc_key(text: str) -> int:
    return zlib.crc32(text.encode())
