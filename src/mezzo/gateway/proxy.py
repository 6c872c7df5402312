"""The data plane: an HTTP/1.1 reverse proxy on asyncio protocols and httptools, no ASGI in between.

Per client connection, requests are parsed as bytes arrive; a request whose body fits in
``BUFFER_BODY`` is read whole before it is proxied (so it can be retried on another node),
a larger one is streamed to the upstream as it arrives. The response is piped from the
upstream connection's parser callbacks straight into the client transport, with back-pressure
both ways. Pipelined requests are answered in order.

Protections: headers beyond ``max_header_bytes`` get 431, bodies beyond ``max_body`` 413,
unparseable requests 400; a client that does not finish its headers within the header timeout,
or pauses its body longer than the body timeout, is answered 408 and cut; idle keep-alive
connections close after the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import httptools
import structlog

from mezzo.gateway.http import IDEMPOTENT, Reply, Request, problem, upstream_head
from mezzo.gateway.plugins import Ctx
from mezzo.gateway.upstream import Balancer, NodeState, UpstreamConnection

log = structlog.get_logger("mezzo.gateway")
BUFFER_BODY = 1024 * 1024
HIGH_WATER = 1024 * 1024
NO_BODY_STATUS = frozenset({204, 304})
DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"trailer",
                           b"upgrade", b"te"})


class Limits:
    __slots__ = ("body_timeout", "header_timeout", "keepalive_timeout", "max_body", "max_header_bytes")

    def __init__(self, max_header_bytes: int = 16 * 1024, max_body: int = 16 * 1024 * 1024,
                 header_timeout: float = 10.0, body_timeout: float = 60.0, keepalive_timeout: float = 75.0) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout


class _Reject(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.limits: Limits = gateway.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.closed = False
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._current: Request | None = None
        self._stream: _BodyStream | None = None
        # requests ready to be answered, and whether one is being answered
        self._queue: deque[tuple[Request, _BodyStream | None]] = deque()
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self.on_writable: Any = None  # resumes an upstream paused for our sake
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_ended: asyncio.Future[None] | None = None
        self._upgrade_rest = b""

    # asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self.gateway.connections.add(self)
        self._arm(self.limits.header_timeout, 408)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_rest = data[upgrade.args[0]:]
            self._on_upgrade_parsed()
        except _Reject as reject:
            self._fail(reject.reply)
        except httptools.HttpParserError as exc:
            self._fail(problem(400, f"malformed request: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gateway.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("client went away"))
        if self.tunnel is not None:
            self.tunnel.close()
            if self.tunnel_ended is not None and not self.tunnel_ended.done():
                self.tunnel_ended.set_result(None)
        if self._stream is not None:
            self._stream.fail(ConnectionResetError("client went away"))

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None
        if self.on_writable is not None:
            self.on_writable()

    @property
    def writable(self) -> bool:
        return self._writable is None

    # httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self._current = None
        self._stream = None
        if self._timer is not None:  # a keep-alive wait ends; the header clock starts
            self._arm(self.limits.header_timeout, 408)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject(problem(414 if len(self._url) > self.limits.max_header_bytes else 431,
                                  "request line or headers too large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject(problem(431, f"request headers larger than {self.limits.max_header_bytes} bytes"))
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        request = Request(parser.get_method().decode(), self._url, self._headers, self.client_ip,
                          parser.get_http_version(), parser.should_keep_alive())
        length = None
        for name, value in self._headers:
            if name == b"host":
                request.host = value.decode("latin-1")
            elif name == b"content-length":
                if not value.strip().isdigit():
                    raise _Reject(problem(400, "invalid content-length"))
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                request.chunked = True
        request.content_length = length
        request.upgrade = bool(parser.should_upgrade())
        if length is not None and length > self.limits.max_body:
            raise _Reject(problem(413, f"request body larger than {self.limits.max_body} bytes"))
        self._current = request
        if request.upgrade:
            return  # the upgrade exception follows; handled in data_received
        if (length is None and not request.chunked) or length == 0:
            request.body = b""
            return  # complete; dispatched by on_message_complete
        if request.chunked or (length or 0) > BUFFER_BODY:
            self._stream = _BodyStream(self, chunked=request.chunked)
            self._dispatch(request, self._stream)
        self._arm(self.limits.body_timeout, 408)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body:
            raise _Reject(problem(413, f"request body larger than {self.limits.max_body} bytes"))
        if self._stream is not None:
            self._stream.feed(body)
        else:
            self._body.append(body)
        self._arm(self.limits.body_timeout, 408)

    def on_message_complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        request = self._current
        if request is None:
            return
        if self._stream is not None:
            self._stream.finish()
            return
        if request.body is None:
            request.body = b"".join(self._body)
        self._dispatch(request, None)

    def _on_upgrade_parsed(self) -> None:
        request = self._current
        if request is None:
            self._fail(problem(400, "malformed upgrade"))
            return
        request.body = b""
        if self.transport is not None:
            self.transport.pause_reading()  # nothing more until the upstream accepts the upgrade
        self._dispatch(request, None)

    # answering ------------------------------------------------------------------------------
    def _dispatch(self, request: Request, stream: _BodyStream | None) -> None:
        if self._busy:
            self._queue.append((request, stream))
            if self.transport is not None and len(self._queue) > 16:
                self.transport.pause_reading()  # a client pipelining without reading answers
            return
        self._busy = True
        self.loop.create_task(self._serve(request, stream))

    async def _serve(self, request: Request, stream: _BodyStream | None) -> None:
        while True:
            keep = await self.gateway.handle(self, request, stream)
            if not keep or not request.keep_alive or self.closed:
                self.close()
                return
            if not self._queue:
                break
            request, stream = self._queue.popleft()
        self._busy = False
        if self.transport is not None and not self.closed and self.tunnel is None:
            self.transport.resume_reading()
            self._arm(self.limits.keepalive_timeout, None)

    def _arm(self, seconds: float, status: int | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._timeout, status)

    def _timeout(self, status: int | None) -> None:
        self._timer = None
        if status is not None and not self._busy:
            self._fail(problem(status, "the client was too slow"))
        elif status is None and not self._busy:
            self.close()

    def _fail(self, reply: Reply) -> None:
        if self.transport is not None and not self.closed:
            if not self._busy:
                self.transport.write(reply.encode(False))
            self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class _BodyStream:
    """A request body being streamed upstream: buffered until an upstream connection takes it."""

    def __init__(self, client: ClientConnection, chunked: bool) -> None:
        self.client = client
        self.parts: list[bytes] = []
        self.conn: UpstreamConnection | None = None
        self.chunked = chunked  # forwarded as it came: chunked, or with its content-length
        self.done = False
        self.finished: asyncio.Future[None] = client.loop.create_future()

    def feed(self, data: bytes) -> None:
        if self.conn is None:
            self.parts.append(data)
            return
        self.conn.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        transport = self.conn.transport
        if transport is not None and transport.get_write_buffer_size() > HIGH_WATER and self.client.transport:
            self.client.transport.pause_reading()
            self.conn.on_drain = self.client.transport.resume_reading

    def finish(self) -> None:
        self.done = True
        if self.conn is not None and self.chunked:
            self.conn.write(b"0\r\n\r\n")
        if not self.finished.done():
            self.finished.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)

    def attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        parts, self.parts = self.parts, []
        for part in parts:
            self.feed(part)
        if self.done and self.chunked:
            conn.write(b"0\r\n\r\n")


class Exchange:
    """One try of a request against one upstream node: pipes the response to the client."""

    __slots__ = (
        "balancer",
        "chunked",
        "client",
        "close_after",
        "conn",
        "ctx",
        "done",
        "head_only",
        "head_sent",
        "loop",
        "node",
        "read_timeout",
        "started",
        "status",
        "timer",
        "upgraded",
    )

    def __init__(self, client: ClientConnection, ctx: Ctx, node: NodeState, balancer: Balancer,
                 read_timeout: float, head_only: bool) -> None:
        self.client, self.ctx, self.node, self.balancer = client, ctx, node, balancer
        self.loop = client.loop
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.head_sent = False
        self.chunked = False
        self.close_after = False
        self.started = time.monotonic()
        self.read_timeout = read_timeout
        self.timer: asyncio.TimerHandle | None = None
        self.conn: UpstreamConnection | None = None
        self.head_only = head_only
        self.status = 0
        self.upgraded = False

    def arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        if self.conn is not None:
            self.conn._fail(TimeoutError("upstream read timeout"))

    # Sink
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], conn: UpstreamConnection) -> None:
        self.arm()
        self.status = status
        ctx = self.ctx
        ctx.status = status
        for hook in ctx.route.chain.header_filter if ctx.route.chain else ():
            hook(ctx, headers)
        status = ctx.status
        request = ctx.request
        framed = False
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        if status == 101:
            self.upgraded = True
            for name, value in headers:
                lines.append(b"%s: %s\r\n" % (name, value))
            self.client.write(b"".join(lines) + b"\r\n")
            self.head_sent = True
            if not self.done.done():
                self.done.set_result(None)  # the tunnel takes over
            return
        else:
            for name, value in headers:
                if name in DROP_RESPONSE:
                    if name == b"transfer-encoding":
                        self.chunked = True
                    continue
                if name == b"content-length":
                    framed = True
                lines.append(b"%s: %s\r\n" % (name, value))
            for name, value in ctx.response_headers:
                lines.append(b"%s: %s\r\n" % (name, value))
            bodyless = self.head_only or status in NO_BODY_STATUS or status < 200
            if not framed and not bodyless:
                if request.http_version == "1.0":
                    self.close_after = True  # close-delimited for an HTTP/1.0 client
                else:
                    self.chunked = True
                    lines.append(b"transfer-encoding: chunked\r\n")
            elif framed or bodyless:
                self.chunked = self.chunked and not framed and not bodyless
            if not conn.keep_alive and not framed and not self.chunked and not bodyless:
                self.close_after = True
            if self.close_after or not request.keep_alive:
                lines.append(b"connection: close\r\n")
            else:
                lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.client.write(b"".join(lines))
        self.head_sent = True

    def on_body(self, data: bytes) -> None:
        self.arm()
        self.ctx.bytes_sent += len(data)
        self.client.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        if not self.client.writable and self.conn is not None and self.conn.transport is not None:
            transport = self.conn.transport
            transport.pause_reading()
            self.client.on_writable = transport.resume_reading

    def on_end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.chunked:
            self.client.write(b"0\r\n\r\n")
        self.client.on_writable = None
        if not self.done.done():
            self.done.set_result(None)

    def on_error(self, exc: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.client.on_writable = None
        if not self.done.done():
            self.done.set_exception(exc)

    def on_tunnel(self, data: bytes) -> None:
        self.client.write(data)


def _reason(status: int) -> bytes:
    from mezzo.gateway.http import REASONS

    return REASONS.get(status, b"Unknown")


async def proxy(client: ClientConnection, ctx: Ctx, balancer: Balancer, stream: _BodyStream | None,
                extra_headers: list[tuple[bytes, bytes]] | None = None) -> bool:
    """Send the request upstream with retries; True when the client connection may be kept."""
    request = ctx.request
    spec = balancer.spec
    retryable = stream is None and request.method in IDEMPOTENT and not request.upgrade
    tries = 1 + (spec.retries if retryable else 0)
    tried: list[NodeState] = []
    last_error: BaseException | None = None
    for _ in range(tries):
        node = balancer.pick(ctx.hash_key, tried)
        if node is None:
            break
        tried.append(node)
        ctx.node = node
        host = request.host if spec.pass_host == "pass" and request.host else (
            spec.upstream_host if spec.pass_host == "rewrite" else f"{node.host}:{node.port}")
        body = request.body if stream is None else None
        head = upstream_head(request, host or node.key, len(body) if body is not None else request.content_length,
                             chunked=stream is not None and stream.chunked, extra=extra_headers)
        node.active += 1
        exchange: Exchange | None = None
        try:
            try:
                conn = await node.connect(spec.timeout.connect)
            except (OSError, TimeoutError) as exc:
                last_error = exc
                balancer.report(node, False)
                continue
            exchange = Exchange(client, ctx, node, balancer, spec.timeout.read, request.method == "HEAD")
            exchange.conn = conn
            conn.start(exchange, head, body, exchange.head_only)
            if stream is not None:
                stream.attach(conn)
            exchange.arm()
            try:
                await exchange.done
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                last_error = exc
                balancer.report(node, False)
                if exchange.head_sent:
                    client.close()  # mid-response: nothing to do but cut the connection
                    return False
                if isinstance(exc, TimeoutError):
                    break  # a read timeout is not retried: the upstream may be working on it
                continue
            if exchange.upgraded:
                await _tunnel(client, conn)
                return False
            statuses = spec.health_check.passive.statuses if spec.health_check.passive else ()
            balancer.report(node, exchange.status not in statuses, time.monotonic() - exchange.started)
            node.release(conn)
            return not exchange.close_after
        finally:
            node.active -= 1
            if exchange is not None and exchange.timer is not None:
                exchange.timer.cancel()
    if last_error is None:
        reply = problem(503, f"upstream {balancer.name!r} has no node to send to")
    elif isinstance(last_error, TimeoutError):
        reply = problem(504, f"upstream {balancer.name!r} did not answer in time")
    else:
        reply = problem(502, f"upstream {balancer.name!r} failed: {type(last_error).__name__}: {last_error}")
    ctx.status = reply.status
    ctx.error = str(last_error) if last_error else "no node"
    client.write(reply.encode(request.keep_alive, ctx.response_headers))
    return True


async def _tunnel(client: ClientConnection, conn: UpstreamConnection) -> None:
    """After a 101: bytes flow both ways until either side closes."""
    ended: asyncio.Future[None] = client.loop.create_future()
    client.tunnel = conn
    client.tunnel_ended = ended
    conn.sink = _TunnelSink(client, ended)
    if client._timer is not None:
        client._timer.cancel()  # a tunnel has no request timeouts
    rest = client._upgrade_rest
    if rest:
        conn.write(rest)
    if client.transport is not None:
        client.transport.resume_reading()
    if not client.closed and not conn.closed:
        await ended
    client.close()
    conn.close()


class _TunnelSink:
    def __init__(self, client: ClientConnection, ended: asyncio.Future[None]) -> None:
        self.client = client
        self.ended = ended

    def on_tunnel(self, data: bytes) -> None:
        self.client.write(data)

    def on_error(self, exc: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def on_head(self, *args: Any) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
