"""The client side of the data plane: one HTTP/1.1 connection from a client, parsed with httptools.

Requests are parsed as bytes arrive; a request whose body fits in ``BUFFER_BODY`` is read whole
before it is proxied (so it can be retried on another node), a larger one is streamed to the
upstream as it arrives, with back-pressure. Pipelined requests are answered in order.

Protections: headers beyond ``max_header_bytes`` get 431, bodies beyond ``max_body`` 413,
unparseable requests 400; a client that does not finish its headers within the header timeout,
or pauses its body longer than the body timeout, is answered 408 (when nothing of the answer
went out yet) and cut; idle keep-alive connections close after the keep-alive timeout. A
client that goes away, or breaks a limit while its request is being proxied, ends the exchange
with the upstream without counting against the upstream node's health. The clocks are not
timers: the gateway calls ``tick`` on every connection every ``TICK`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools
import structlog

from mezzo.gateway.http import NOT_FORWARDED, NoCallbacks, Reply, Request, forwarded_lines, problem

if TYPE_CHECKING:
    from mezzo.gateway.proxy import Exchange
    from mezzo.gateway.upstream import UpstreamConnection

log = structlog.get_logger("mezzo.gateway")
BUFFER_BODY = 1024 * 1024
HIGH_WATER = 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TICK = 0.1  # how often the gateway checks clients' and upstreams' clocks
# the header lines the express lane looks at: Host and a plain Connection it handles, any other
# sends the request the general way (llhttp allows no space before the colon)
SPECIAL = re.compile(rb"\r\n(" + b"|".join(sorted(NOT_FORWARDED)) + rb"):[ \t]*([^\r]*)", re.IGNORECASE)
SPECIAL_NAMES = re.compile(rb"\r\n(?:" + b"|".join(sorted(NOT_FORWARDED)) + rb"):")  # in a lowercase head
HOST_ONLY = [b"\r\nhost:"]


class Limits:
    __slots__ = ("body_timeout", "header_timeout", "keepalive_timeout", "max_body", "max_header_bytes")

    def __init__(self, max_header_bytes: int = 16 * 1024, max_body: int = 16 * 1024 * 1024,
                 header_timeout: float = 10.0, body_timeout: float = 60.0, keepalive_timeout: float = 75.0) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout


class ClientAbort(Exception):
    """The client side ended an exchange: it went away (``reply`` None) or broke a limit (answer ``reply``)."""

    def __init__(self, reply: Reply | None) -> None:
        super().__init__(reply.status if reply is not None else "client went away")
        self.reply = reply


class _Reject(Exception):
    """Raised in a parser callback to stop parsing; the verdict is in ``ClientConnection._reject``."""


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    def __init__(self, gateway: Any, scheme: str = "http") -> None:
        self.gateway = gateway
        self.scheme = scheme
        self.limits: Limits = gateway.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.checker = httptools.HttpRequestParser(NoCallbacks())  # the express lane's
        self.client_ip = ""
        self.forwarded = b""
        self.closed = False
        self.broken = False  # a limit was broken: nothing more is read, the connection closes
        self.aborted: ClientAbort | None = None  # set when the client went away
        self._refusal: Reply | None = None  # sent after the answers to the requests before the bad one
        self.exchange: Exchange | None = None  # the upstream exchange answering the current request
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._current: Request | None = None
        self._stream: _BodyStream | None = None
        self._parsing = False
        self._reject: Reply | None = None
        # requests ready to be answered, and whether one is being answered
        self._queue: deque[tuple[Request, _BodyStream | None]] = deque()
        self._busy = False
        self._serving: tuple[Request, _BodyStream | None] | None = None
        self._in_run = False
        self._sync_keep: bool | None = None
        self.deadline = 0.0  # loop time when the client's current clock runs out (0: none)
        self._deadline_status: int | None = None  # answer 408 then, or just close (keep-alive idle)
        self._writable: asyncio.Future[None] | None = None
        self.on_writable: Any = None  # resumes an upstream paused for our sake
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_ended: asyncio.Future[None] | None = None
        self._upgrade_rest = b""

    # asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        # an IPv4 client of a dual-stack (::) listener arrives as ::ffff:a.b.c.d: one client, one address
        # in X-Forwarded-For, X-Real-IP, limit keys and logs, whichever listener it came through
        self.client_ip = ip[7:] if ip.startswith("::ffff:") and "." in ip else ip
        self.forwarded = forwarded_lines(self.client_ip, self.scheme)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gateway.connections.add(self)
        self._arm(self.limits.header_timeout, 408)

    def data_received(self, data: bytes) -> None:
        if not self._busy and not self._parsing and self.tunnel is None and not self.broken \
                and len(data) <= self.limits.max_header_bytes and data.find(b"\r\n\r\n") == len(data) - 4:
            request = self._express(data)
            if request is not None:
                self.deadline = 0.0
                self._current, self._stream = request, None
                self._busy = True
                self._run(request, None)
                return
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_rest = data[upgrade.args[0]:]
            self._on_upgrade_parsed()
        except httptools.HttpParserError as exc:
            reply, self._reject = self._reject, None  # a callback's own verdict (httptools wraps its exception)
            self._fail(reply or problem(400, f"malformed request: {exc}"))

    def _express(self, data: bytes) -> Request | None:
        """The express lane: ``data`` is one whole request head with no body (nothing else came) and
        no header the proxy must rewrite but Host and a plain Connection. llhttp checks its syntax
        without a Python call per header; the lines are kept raw (``Request.headers`` splits them if
        asked) and go upstream as they came. None: take the general way (the parser's callbacks),
        which also makes every refusal."""
        line_end = data.find(b"\r\n")
        version = data[line_end - 9:line_end]
        if version == b" HTTP/1.1":
            http_version, keep = "1.1", True
        elif version == b" HTTP/1.0":
            http_version, keep = "1.0", False
        else:
            return None
        lower = data.lower()
        found = SPECIAL_NAMES.findall(lower, line_end)
        end = len(data) - 4
        if found == HOST_ONLY:  # the common case, in C calls only
            at = lower.find(b"\r\nhost:", line_end)
            stop = data.find(b"\r\n", at + 7)
            host = data[at + 7:stop].lstrip(b" \t")
            forward = data[line_end:at] + data[stop:end]
        else:
            host = None
            forward = b""
            at = line_end
            for match in SPECIAL.finditer(data, line_end):
                name = match.group(1).lower()
                if name == b"host" and host is None:
                    host = match.group(2)
                elif name == b"connection" and found.count(b"\r\nconnection:") == 1:
                    token = match.group(2).rstrip(b" \t").lower()
                    if token == b"close":
                        keep = False
                    elif token == b"keep-alive":
                        keep = True
                    else:
                        return None  # it names headers to drop
                else:
                    return None
                start, stop = match.span()
                forward += data[at:start]
                at = stop
            if host is None and http_version == "1.1":
                return None  # refused the general way
            forward += data[at:end]
        space = data.find(b" ")
        if data[:space] == b"CONNECT":
            return None
        try:
            self.checker.feed_data(data)
        except httptools.HttpParserError:
            self.checker = httptools.HttpRequestParser(NoCallbacks())
            return None  # the general way refuses it (400)
        return Request(data[:space].decode("latin-1"), data[space + 1:line_end - 9], None, self.client_ip,
                       http_version, keep, data[line_end:-2], forward,
                       "" if host is None else host.decode("latin-1"), self.scheme, self.forwarded, b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gateway.connections.discard(self)
        self.deadline = 0.0
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self.tunnel is not None:
            self.tunnel.close()
            if self.tunnel_ended is not None and not self.tunnel_ended.done():
                self.tunnel_ended.set_result(None)
        self._abort()

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
        self._parsing = True
        if not self._busy:  # a keep-alive wait ends; the header clock starts
            self._arm(self.limits.header_timeout, 408)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(problem(414 if len(self._url) > self.limits.max_header_bytes else 431,
                                 "request line or headers too large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(problem(431, f"request headers larger than {self.limits.max_header_bytes} bytes"))
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        request = Request(parser.get_method().decode(), self._url, self._headers, self.client_ip,
                          parser.get_http_version(), parser.should_keep_alive())
        request.scheme = self.scheme
        request.forwarded = self.forwarded
        length = None
        expect = False
        has_host = False
        for name, value in self._headers:
            if name == b"host":
                if has_host:
                    self._refuse(problem(400, "more than one host header"))
                has_host = True
                request.host = value.decode("latin-1")
            elif name == b"content-length":
                if not value.strip().isdigit() or (length is not None and int(value) != length):
                    self._refuse(problem(400, "invalid content-length"))
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                request.chunked = True
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if not has_host and request.http_version == "1.1":
            self._refuse(problem(400, "an HTTP/1.1 request needs a host header"))
        request.content_length = length
        request.upgrade = bool(parser.should_upgrade())
        if length is not None and length > self.limits.max_body:
            self._refuse(problem(413, f"request body larger than {self.limits.max_body} bytes"))
        self._current = request
        if request.upgrade:
            return  # the upgrade exception follows; handled in data_received
        if (length is None and not request.chunked) or length == 0:
            request.body = b""
            return  # complete; dispatched by on_message_complete
        if expect and not self._busy and request.http_version == "1.1" and self.transport is not None:
            self.transport.write(CONTINUE)  # we read the body before proxying, as nginx does
        if request.chunked or (length or 0) > BUFFER_BODY:
            self._stream = _BodyStream(self, chunked=request.chunked)
            self._dispatch(request, self._stream)
        self._arm(self.limits.body_timeout, 408)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body:
            self._refuse(problem(413, f"request body larger than {self.limits.max_body} bytes"))
        if self._stream is not None:
            self._stream.feed(body)
        else:
            self._body.append(body)
        self._arm(self.limits.body_timeout, 408)

    def on_message_complete(self) -> None:
        self._parsing = False
        self.deadline = 0.0
        request = self._current
        if request is None or request.upgrade:
            return  # an upgrade is dispatched once the parser has stopped (see data_received)
        if self._stream is not None:
            self._stream.finish()
            return
        if request.body is None:
            request.body = b"".join(self._body)
        self._body = []
        self._dispatch(request, None)

    def _refuse(self, reply: Reply) -> None:
        self._reject = reply
        raise _Reject

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
        self._run(request, stream)

    def _run(self, request: Request, stream: _BodyStream | None) -> None:
        """Answer requests in order until one is answered later (an exchange, a task) or none is left.

        ``gateway.serve`` ends every request with ``finished``: at once when it answers by itself
        (a loop here, not a recursion, however many requests a client pipelines), or from the
        exchange's or task's completion."""
        while True:
            self._serving = (request, stream)
            self._sync_keep = None
            self._in_run = True
            try:
                self.gateway.serve(self, request, stream)
            except Exception:
                log.exception("gateway request failed")
                self._sync_keep = False
            self._in_run = False
            keep = self._sync_keep
            if keep is None:
                return  # answered later; finished() goes on from there
            following = self._after(keep)
            if following is None:
                return
            request, stream = following

    def finished(self, keep: bool) -> None:
        """The current request is answered; ``keep``: the connection may serve another."""
        if self._in_run:
            self._sync_keep = keep
            return
        following = self._after(keep)
        if following is not None:
            self._run(*following)

    def _after(self, keep: bool) -> tuple[Request, _BodyStream | None] | None:
        serving = self._serving
        assert serving is not None  # set by _run before any request is answered
        request, stream = serving
        if stream is not None and not stream.done:
            stream.discard()  # answered before the whole body came: the rest is read and dropped
        if not keep or not request.keep_alive or self.closed:
            self.close()
            return None
        if self._queue:
            return self._queue.popleft()
        if self.broken:
            if self._refusal is not None:
                self.write(self._refusal.encode(False))
            self.close()
            return None
        self._busy = False
        if self.transport is not None and not self.closed and self.tunnel is None:
            self.transport.resume_reading()
            if not self._parsing:
                self.deadline = self.loop.time() + self.limits.keepalive_timeout  # as _arm(..., None)
                self._deadline_status = None
            elif self._current is None:
                self._arm(self.limits.header_timeout, 408)
            else:
                self._arm(self.limits.body_timeout, 408)
        return None

    def _arm(self, seconds: float, status: int | None) -> None:
        # no timer per request: the gateway's tick looks at every connection's deadline (see tick)
        self.deadline = self.loop.time() + seconds
        self._deadline_status = status

    def tick(self, now: float) -> None:
        """Called by the gateway every ``TICK`` seconds: run out the client's and the upstream's clocks."""
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            self._timeout(self._deadline_status)
        exchange = self.exchange
        if exchange is not None:
            exchange.tick(now)

    def _timeout(self, status: int | None) -> None:
        if status is None:
            if not self._busy:
                self.close()  # an idle keep-alive connection
        elif self._stream is not None and not self._stream.done:
            if self._stream.held:  # we stopped reading it for a slow upstream: its send timeout decides
                self._arm(self.limits.body_timeout, status)
                return
            self._fail(problem(status, "the client stopped sending its request body"))
        elif not self._busy:
            self._fail(problem(status, "the client was too slow"))
        # else: a pipelined request's clock; it restarts when the answers before it are out

    def _fail(self, reply: Reply) -> None:
        """Refuse the client (a limit broken, a malformed request): answer ``reply`` if possible, then close."""
        if self.closed or self.broken or self.transport is None:
            return
        self.broken = True
        if not self._busy:
            self.transport.write(reply.encode(False))
            self.close()
            return
        self.transport.pause_reading()
        stream = self._stream
        if stream is not None and not stream.done:
            # the request whose body broke the limit is being (or is queued to be) proxied: end it
            abort = ClientAbort(reply)
            stream.fail(abort)
            if self.exchange is not None and self.exchange.stream is stream:
                self.exchange.abort(abort)
        else:
            self._refusal = reply

    def _abort(self) -> None:
        """The client went away: end the exchange in flight and every streamed body."""
        abort = ClientAbort(None)
        if self.aborted is None:
            self.aborted = abort
        if self.exchange is not None:
            self.exchange.abort(abort)
        if self._stream is not None:
            self._stream.fail(abort)
        for _, stream in self._queue:
            if stream is not None:
                stream.fail(abort)

    def answer(self, reply: Reply, request: Request, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Send a response the gateway makes itself (HEAD gets the headers only)."""
        self.write(reply.encode(request.keep_alive, extra, head=request.method == "HEAD"))

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

    def cut(self) -> None:
        """Drop the connection at once, unsent bytes and all: ``close`` would wait for a client that
        stopped reading to take them, for ever."""
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class _BodyStream:
    """A request body being streamed upstream: buffered until an upstream connection takes it."""

    __slots__ = ("chunked", "client", "conn", "discarding", "done", "error", "held", "parts")

    def __init__(self, client: ClientConnection, chunked: bool) -> None:
        self.client = client
        self.parts: list[bytes] = []
        self.conn: UpstreamConnection | None = None
        self.chunked = chunked  # forwarded as it came: chunked, or with its content-length
        self.done = False
        self.discarding = False
        self.held = False  # the client is not read while the upstream catches up (its pause is not the client's)
        self.error: ClientAbort | None = None

    def feed(self, data: bytes) -> None:
        if self.discarding:
            return
        conn = self.conn
        if conn is None:
            self.parts.append(data)
            return
        conn.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        transport = conn.transport
        client = self.client.transport
        if transport is not None and client is not None and transport.get_write_buffer_size() > HIGH_WATER:
            client.pause_reading()  # the upstream reads slower than the client sends
            self.held = True
            conn.on_drain = self._resume

    def _resume(self) -> None:
        """The upstream took what was waiting: read the client again; its body clock starts over."""
        self.held = False
        client = self.client
        if client.transport is not None and not client.closed and not client.broken:
            client.transport.resume_reading()
            client._arm(client.limits.body_timeout, 408)

    def finish(self) -> None:
        self.done = True
        if self.conn is not None:
            if self.chunked:
                self.conn.write(b"0\r\n\r\n")
            self.conn.on_drain = None

    def fail(self, exc: ClientAbort) -> None:
        if not self.done and self.error is None:
            self.error = exc

    def attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        parts, self.parts = self.parts, []
        for part in parts:
            self.feed(part)
        if self.done:
            self.finish()

    def discard(self) -> None:
        """Nothing more goes upstream; the rest of the body is read and dropped."""
        self.discarding = True
        self.held = False
        self.parts = []
        if self.conn is not None:
            self.conn.on_drain = None
            self.conn = None
        transport = self.client.transport
        if transport is not None and not self.client.closed and not self.client.broken:
            transport.resume_reading()
