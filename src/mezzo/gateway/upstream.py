"""Upstream side of the proxy: keep-alive connection pools, load balancers, health.

A response is read in one of two ways. When nothing looks at its headers (no header filter, no
body filter, no upgrade) the parser is made without a header callback ("lean"): the head is
taken as the upstream sent it and only what frames the body is looked for in it; otherwise every
header is delivered to the sink as a (name, value) pair.

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
import math
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import httptools
import structlog

from mezzo.gateway.http import NoCallbacks
from mezzo.gateway.model import PassiveCheck, UpstreamSpec
from mezzo.resilience.policies import ResiliencePolicy

log = structlog.get_logger("mezzo.gateway")
IDLE_TIMEOUT = 60.0  # an idle pooled connection is closed after this (checked by the gateway's sweep)
# a body framed by the upstream: else it runs until the upstream closes
FRAMED = re.compile(rb"\r\n(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)
# the header lines of a response head (in lowercase) the express way looks at
WHOLE_NAMES = re.compile(rb"\r\n(?:content-length|connection|keep-alive|transfer-encoding|proxy-connection"
                         rb"|trailer|upgrade|te):")
CONTENT_LENGTH_ONLY = [b"\r\ncontent-length:"]
WITH_CONNECTION = ([b"\r\ncontent-length:", b"\r\nconnection:"], [b"\r\nconnection:", b"\r\ncontent-length:"])
HTTP_VERSIONS = (b"HTTP/1.1 ", b"HTTP/1.0 ")


class Sink(Protocol):
    """Where an upstream connection delivers the response of the current exchange."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], conn: UpstreamConnection) -> None: ...
    def on_head_raw(self, status: int, head: bytes, conn: UpstreamConnection) -> None: ...
    def on_whole(self, status: int, lines: bytes, body: bytes) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_error(self, exc: BaseException) -> None: ...
    def on_tunnel(self, data: bytes) -> None: ...
    def flush(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream node: sends request heads and bodies, parses responses into a sink."""

    __slots__ = (
        "_writable",
        "checker",
        "closed",
        "express",
        "full_parser",
        "head_only",
        "headers",
        "interim",
        "keep_alive",
        "lean",
        "lean_parser",
        "node",
        "on_drain",
        "parser",
        "paused_at",
        "pending",
        "raw",
        "released_at",
        "reset",
        "response_started",
        "reused",
        "sink",
        "transport",
        "tunnel",
        "until_close",
        "upgrading",
    )

    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.parser = self.full_parser = httptools.HttpResponseParser(self)
        self.lean_parser: httptools.HttpResponseParser | None = None  # made when first needed
        self.lean = False  # the current response is read by the lean parser
        self.express = False  # the current response may be taken whole from its first read (see _whole)
        self.checker: httptools.HttpResponseParser | None = None  # the express way's syntax check
        self.raw: bytes | None = None  # lean: the response's bytes until its head is complete
        self.sink: Sink | None = None
        self.closed = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.tunnel = False
        self.upgrading = False  # a 101 came: what follows belongs to the tunnel
        self.pending: list[bytes] = []  # tunnel bytes that came before the tunnel's sink
        self.head_only = False
        self.interim = False  # inside a 1xx response that is not the answer (100 Continue)
        self.reset = False  # the parser must be replaced (after the head of a HEAD answer)
        self.until_close = False  # the body ends when the upstream closes
        self.response_started = False
        self.reused = False
        self.released_at = 0.0
        self.paused_at = 0.0
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
        if self.express:
            self.express = False
            if self._whole(data):
                return
        if self.tunnel:
            self._tunnel_data(data)
            return
        raw = self.raw
        if raw is not None:
            self.raw = raw + data if raw else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.tunnel = True
            rest = data[upgrade.args[0]:]
            if rest:
                self._tunnel_data(rest)
        except httptools.HttpParserError as exc:
            self._fail(exc)
        sink = self.sink
        if sink is not None:
            sink.flush()
        if self.reset:
            self.reset = False
            if self.lean:
                self.parser = self.lean_parser = self._new_lean_parser()
            else:
                self.parser = self.full_parser = httptools.HttpResponseParser(self)

    def _whole(self, data: bytes) -> bool:
        """The express way for a lean exchange: when the first read is the whole response, framed by
        one content-length, with no hop-by-hop header but a plain Connection (and Keep-Alive), it
        goes to the sink in one call: llhttp checks its syntax without a Python callback, the head's
        lines are passed on as they came. False: nothing was done, read it the usual way."""
        head_end = data.find(b"\r\n\r\n")
        code = data[9:12]
        if head_end < 0 or data[12:13] != b" " or data[:9] not in HTTP_VERSIONS or not code.isdigit():
            return False
        status = int(code)
        if status < 200 or status in (204, 304):
            return False
        line_end = data.find(b"\r\n")
        lower = data[:head_end + 2].lower()
        found = WHOLE_NAMES.findall(lower, line_end)
        keep = data[7] == 49  # "1": HTTP/1.1 keeps the connection unless told otherwise
        at = lower.find(b"\r\ncontent-length:", line_end)
        if at < 0:
            return False
        stop = lower.find(b"\r\n", at + 17)
        value = lower[at + 17:stop].strip(b" \t")
        if not value.isdigit() or head_end + 4 + int(value) != len(data):
            return False
        if found == CONTENT_LENGTH_ONLY:
            lines = data[line_end:head_end]
        elif found == WITH_CONNECTION[0] or found == WITH_CONNECTION[1]:
            at = lower.find(b"\r\nconnection:", line_end)
            stop = lower.find(b"\r\n", at + 13)
            token = lower[at + 13:stop].strip(b" \t")
            if token == b"keep-alive":
                keep = True
            elif token == b"close":
                keep = False
            else:
                return False  # it names headers to drop
            lines = data[line_end:at] + data[stop:head_end]
        else:
            return False  # another hop-by-hop header: the usual way drops it
        checker = self.checker
        if checker is None:
            checker = self.checker = httptools.HttpResponseParser(NoCallbacks())
        try:
            checker.feed_data(data)
        except httptools.HttpParserError as exc:
            self.checker = None
            self._fail(exc)
            return True
        self.response_started = True
        self.keep_alive = keep
        self.raw = None
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_whole(status, lines, data[head_end + 4:])
        return True

    def _new_lean_parser(self) -> httptools.HttpResponseParser:
        # httptools looks its callbacks up once, by name: this object has every one but on_header
        callbacks = _LeanCallbacks(self._begin_lean, self._on_head_lean, self.on_body, self.on_message_complete)
        return httptools.HttpResponseParser(callbacks)

    def _tunnel_data(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.on_tunnel(data)
        else:
            self.pending.append(data)

    def attach_tunnel(self, sink: Sink) -> None:
        """The tunnel after a 101 is set up: deliver what came before it, then everything as it comes."""
        self.sink = sink
        pending, self.pending = self.pending, []
        for data in pending:
            sink.on_tunnel(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.sink is not None:
            if self.until_close and exc is None:
                self._end()  # a close-delimited body is complete when the upstream closes
            else:
                self._fail(exc or ConnectionResetError("upstream closed the connection"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("upstream closed the connection"))

    def pause_writing(self) -> None:
        loop = asyncio.get_running_loop()
        self._writable = loop.create_future()
        self.paused_at = loop.time()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None
        if self.on_drain is not None:
            self.on_drain()

    @property
    def writing_paused(self) -> bool:
        return self._writable is not None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers = []
        self.response_started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self.interim = True  # 100 Continue and friends: the answer is still to come
            return
        self.keep_alive = parser.should_keep_alive()
        if status == 101:
            self.upgrading = True
        elif not self.head_only and status not in (204, 304):
            self.until_close = not any(n == b"content-length" or n == b"transfer-encoding" for n, _ in self.headers)
        if self.sink is not None:
            self.sink.on_head(status, self.headers, self)
        if self.head_only:  # the answer to HEAD has no body, whatever its headers say
            self.reset = True
            self._end()

    def _begin_lean(self) -> None:
        self.response_started = True

    def _on_head_lean(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        raw = self.raw or b""
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError("upstream response head without CRLF line ends")
        if status < 200 and status != 101:
            self.interim = True  # 100 Continue and friends: the answer starts after this head
            self.raw = raw[end + 4:]
            return
        self.raw = None
        head = raw[:end]
        self.keep_alive = parser.should_keep_alive()
        if status == 101:
            self.upgrading = True
        elif not self.head_only and status not in (204, 304):
            self.until_close = FRAMED.search(head) is None
        if self.sink is not None:
            self.sink.on_head_raw(status, head, self)
        if self.head_only:
            self.reset = True
            self._end()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self.head_only:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
        elif not self.head_only and not self.upgrading:
            self._end()

    def _end(self) -> None:
        self.until_close = False
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
    def start(self, sink: Sink, head: bytes, body: bytes | None, head_only: bool, lean: bool = False) -> None:
        """Send a request; ``lean``: nothing needs the response's headers one by one (see the module doc)."""
        self.sink = sink
        self.head_only = head_only
        self.response_started = False
        if lean != self.lean:
            self.lean = lean
            if lean:
                if self.lean_parser is None:
                    self.lean_parser = self._new_lean_parser()
                self.parser = self.lean_parser
            else:
                self.parser = self.full_parser
        self.raw = b"" if lean else None
        self.express = lean and not head_only
        transport = self.transport
        assert transport is not None
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        self.sink = None
        if self.transport is not None:
            self.transport.close()


class _LeanCallbacks:
    __slots__ = ("on_body", "on_headers_complete", "on_message_begin", "on_message_complete")

    def __init__(self, begin: Callable[[], None], head: Callable[[], None], body: Callable[[bytes], None],
                 complete: Callable[[], None]) -> None:
        self.on_message_begin, self.on_headers_complete = begin, head
        self.on_body, self.on_message_complete = body, complete


def split_head(head: bytes) -> list[tuple[bytes, bytes]]:
    """The (lowercase name, value) pairs of a response head as the upstream sent it (status line first)."""
    headers = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return headers


def authority(host: str) -> str:
    """A host as it is written before a port or in a Host header: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class NodeState:
    """One upstream node: its pool, load, latency and health."""

    __slots__ = (
        "active",
        "check_fail",
        "check_ok",
        "current_weight",
        "ejected_until",
        "ewma",
        "ewma_at",
        "fails",
        "host",
        "idle",
        "keepalive",
        "key",
        "port",
        "probe_down",
        "retired",
        "server_hostname",
        "ssl",
        "weight",
        "zone",
    )

    def __init__(self, host: str, port: int, weight: int, zone: str | None, keepalive: int) -> None:
        self.host, self.port, self.weight, self.zone = host, port, weight, zone
        self.key = f"{authority(host)}:{port}"  # also the Host header of ``passHost: node``
        self.idle: list[UpstreamConnection] = []
        self.active = 0
        self.ewma = 0.0
        self.ewma_at = 0.0  # when ewma last took a sample (monotonic s)
        self.fails = 0
        self.ejected_until = 0.0
        self.check_ok = 0
        self.check_fail = 0
        self.probe_down = False
        self.current_weight = 0
        self.keepalive = keepalive
        self.retired = False  # no configuration has this node any more: nothing comes back to its pool
        self.ssl: ssl.SSLContext | None = None  # scheme https: TLS to this node, with this name sent and checked
        self.server_hostname: str | None = None

    def healthy(self, now: float) -> bool:
        return not self.probe_down and now >= self.ejected_until and self.weight > 0

    def take(self) -> UpstreamConnection | None:
        """An idle pooled connection, the most recently used first (it is the least likely to be stale)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl,
                                   server_hostname=self.server_hostname if self.ssl is not None else None,
                                   ssl_handshake_timeout=timeout if self.ssl is not None else None),
            timeout)
        return conn

    def release(self, conn: UpstreamConnection, now: float | None = None) -> None:
        """Back to the pool (``now``: the caller's monotonic clock reading, when it has one)."""
        if conn.closed or not conn.keep_alive or conn.tunnel or self.retired or len(self.idle) >= self.keepalive:
            conn.close()
            return
        conn.released_at = time.monotonic() if now is None else now
        self.idle.append(conn)

    def expire(self, before: float) -> None:
        """Close pooled connections idle since before ``before`` (the oldest are at the front)."""
        idle = self.idle
        while idle and (idle[0].closed or idle[0].released_at < before):
            idle.pop(0).close()

    def close(self) -> None:
        """The node left the configuration: close its pool, and each connection in use once it is done."""
        self.retired = True
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


EWMA_DECAY = 10.0  # s: a node's average fades by e every 10 s without a sample (APISIX's DECAY_TIME)


def pick_ewma(nodes: list[NodeState], _: Any) -> NodeState:
    """The lowest average response time x (requests in flight + 1) per unit of weight. The average
    fades towards 0 while a node gets no traffic, as APISIX's does: a node that was slow once is
    tried again after a while instead of being left out for good."""
    now = time.monotonic()
    return min(nodes, key=lambda n: ((n.ewma * math.exp((n.ewma_at - now) / EWMA_DECAY)) or 0.001)
               * (n.active + 1) / n.weight)


class HashRing:
    """Ketama-style consistent hashing: 160 points per unit of weight, md5 of ``host:port-i``.

    Weights may be fractional (registry instances carry floats): a node gets its share of points,
    at least four; a node of weight 0 gets none (it takes no traffic anyway)."""

    def __init__(self, nodes: list[NodeState]) -> None:
        points: list[tuple[int, NodeState]] = []
        for node in nodes:
            if node.weight <= 0:
                continue
            for i in range(max(1, round(40 * node.weight))):
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
    """The nodes of one upstream and how to choose among them.

    ``policy``: the Resiliency policy that targets this upstream, resolved when the snapshot is
    built; None when none does (or it sets nothing), so a plain upstream pays nothing for it."""

    def __init__(self, name: str, spec: UpstreamSpec, nodes: list[NodeState],
                 policy: ResiliencePolicy | None = None) -> None:
        self.name, self.spec, self.nodes = name, spec, nodes
        self.policy = policy if policy is not None and not policy.is_noop else None
        self.short_name = name.split("/", 1)[-1]  # without the namespace, for metric labels
        self.ring = HashRing(nodes) if spec.load_balancer == "chash" else None
        # the node every pick returns, when there is one choice whatever the health (see pick)
        self.only = nodes[0] if len(nodes) == 1 and self.ring is None and nodes[0].weight > 0 else None
        self._pick = {"roundrobin": pick_roundrobin, "least_conn": pick_least_conn, "ewma": pick_ewma,
                      "chash": pick_roundrobin}[spec.load_balancer]
        self.hash_on = spec.hash_on.on
        self.hash_name = (spec.hash_on.key or "").lower()
        self.hash_header = self.hash_name.encode("latin-1")
        passive = spec.health_check.passive
        self.bad_statuses = frozenset(passive.statuses) if passive is not None else frozenset()
        # whether an exchange's outcome matters to anyone: the passive check, or ewma's latencies
        self.tracks = passive is not None or spec.load_balancer == "ewma"
        self.latencies = spec.load_balancer == "ewma"  # only ewma reads a node's average latency
        # what the policy's breaker counts as a failed answer: the passive check's statuses (its
        # defaults when that check is off)
        self.failed_statuses = frozenset((passive or PassiveCheck()).statuses)

    def key_for(self, ctx: Any) -> str | None:
        """The consistent-hash key of a request (``hashOn``), or None when it has none."""
        request = ctx.request
        on = self.hash_on
        if on == "ip":
            return request.client_ip  # type: ignore[no-any-return]
        if on == "header":
            return request.header(self.hash_header)  # type: ignore[no-any-return]
        if on == "cookie":
            return request.cookies.get(self.hash_name)  # type: ignore[no-any-return]
        if on == "arg":
            return request.args.get(self.hash_name)  # type: ignore[no-any-return]
        if on == "consumer":
            return ctx.consumer.ref if ctx.consumer is not None else None
        return request.path  # type: ignore[no-any-return]

    def pick(self, hash_key: str | None, tried: list[NodeState] | None) -> NodeState | None:
        nodes = self.nodes
        if not tried and len(nodes) == 1 and self.ring is None:
            return nodes[0] if nodes[0].weight > 0 else None  # one node: up or not, it is the only choice
        now = time.monotonic()
        if self.ring is not None and hash_key is not None:
            found = self.ring.lookup(hash_key, lambda n: n.healthy(now) and (not tried or n not in tried))
            if found is not None:
                return found
        if not tried and len(nodes) == 1:
            return nodes[0] if nodes[0].weight > 0 else None  # one node: up or not, it is the only choice
        candidates = [n for n in nodes if n.healthy(now) and (not tried or n not in tried)]
        if not candidates:  # panic: every node looks down; try them anyway
            candidates = [n for n in nodes if n.weight > 0 and (not tried or n not in tried)]
        if not candidates:
            return None
        return candidates[0] if len(candidates) == 1 else self._pick(candidates, hash_key)

    def report(self, node: NodeState, ok: bool, latency: float | None = None) -> None:
        """Passive health: count failures in a row; eject at the threshold."""
        if latency is not None and self.latencies:
            now = time.monotonic()  # the old average counts less the older it is: 0.8 back to back
            kept = 0.8 * math.exp((node.ewma_at - now) / EWMA_DECAY) if node.ewma else 0.0
            node.ewma = node.ewma * kept + latency * (1.0 - kept)
            node.ewma_at = now
        passive = self.spec.health_check.passive
        if ok or passive is None:
            node.fails = 0
            return
        node.fails += 1
        if node.fails >= passive.failures:
            node.fails = 0
            node.ejected_until = time.monotonic() + passive.ejection
            log.warning("upstream node ejected", upstream=self.name, node=node.key, seconds=passive.ejection)

    def expire(self, before: float) -> None:
        for node in self.nodes:
            node.expire(before)

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
        tls = node.ssl
        if tls is None and check.type == "https":  # an https check of an http upstream: TLS, the system's CAs
            tls = ssl.create_default_context()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(node.host, node.port, ssl=tls,
                                    server_hostname=(node.server_hostname or node.host) if tls is not None else None),
            check.timeout)
        if check.type == "tcp":
            ok = True
        else:
            writer.write(f"GET {check.path} HTTP/1.1\r\nhost: {authority(node.host)}\r\nconnection: close\r\n"
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

