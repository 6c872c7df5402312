"""The upstream half of the data plane: one try of a request against a node, retries, tunnels.

The response is piped from the upstream connection's parser callbacks straight into the client
transport (the head goes out with the first body bytes, in one write), with back-pressure both
ways. ``start_fast`` takes the common case, a buffered request and an idle pooled connection,
without a task; ``proxy`` is the general path: new connections, retries, streamed bodies,
websocket upgrades.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

import httptools
import structlog

from mezzo.gateway.client import ClientAbort, ClientConnection, _BodyStream
from mezzo.gateway.http import IDEMPOTENT, REASONS, problem, upstream_head
from mezzo.gateway.plugins import Ctx
from mezzo.gateway.upstream import Balancer, NodeState, UpstreamConnection, split_head
from mezzo.resilience.breaker import CircuitBreaker, Permit
from mezzo.resilience.errors import CircuitOpenError, TimeoutExceeded
from mezzo.resilience.policies import ResiliencePolicy

log = structlog.get_logger("mezzo.gateway")
NO_BODY_STATUS = frozenset({204, 304})
DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"trailer",
                           b"upgrade", b"te"})
STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in REASONS.items()}
KEEP_LINES = (b"connection: close\r\n\r\n", b"connection: keep-alive\r\n\r\n")
# the lines of a raw response head the proxy does not pass on (each with the CRLF before it)
HOP_LINES = re.compile(rb"\r\n(?:connection|keep-alive|transfer-encoding|proxy-connection|trailer|upgrade|te)"
                       rb"[ \t]*:[^\r]*", re.IGNORECASE)
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:", re.IGNORECASE)
CONNECTION = re.compile(rb"\r\nconnection[ \t]*:([^\r]*)", re.IGNORECASE)
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b""})  # a Connection value that names no header


def named_in_connection(values: list[bytes]) -> frozenset[bytes]:
    """The headers a response's Connection values name, which are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens = {t.strip().lower() for value in values for t in value.split(b",")}
    return frozenset(tokens - {b"close", b"keep-alive", b""})


class PluginFailure(Exception):
    """A header or body filter raised: the response is answered 500 (or cut, if it had begun)."""


class Exchange:
    """One try of a request against one upstream node: pipes the response to the client."""

    __slots__ = (
        "balancer",
        "body_filters",
        "callback",
        "chunked",
        "client",
        "close_after",
        "conn",
        "ctx",
        "done",
        "head_only",
        "head_sent",
        "last_read",
        "loop",
        "node",
        "pending",
        "read_timeout",
        "send_timeout",
        "settled",
        "started",
        "status",
        "stream",
        "upgraded",
    )

    def __init__(self, client: ClientConnection, ctx: Ctx, conn: UpstreamConnection, timeouts: Any,
                 head_only: bool, stream: _BodyStream | None, callback: Any = None, started: float = 0.0) -> None:
        self.client, self.ctx, self.conn = client, ctx, conn
        self.loop = loop = client.loop
        # how the end is told: callback(exchange, error) on the fast path, else this future
        self.callback = callback
        self.done: asyncio.Future[None] | None = None if callback is not None else loop.create_future()
        self.settled = False
        self.node: NodeState | None = None
        self.balancer: Balancer | None = None
        self.head_sent = False  # bytes of the response went out to the client
        self.pending: bytes | None = None  # the response head, sent with the first body bytes
        self.chunked = False
        self.close_after = False
        self.started = started or time.monotonic()  # for the node's latency
        self.read_timeout: float = timeouts.read
        self.send_timeout: float = timeouts.send
        self.last_read = loop.time()
        self.head_only = head_only
        self.status = 0
        self.upgraded = False
        self.stream = stream
        self.body_filters = ctx.route.body_filters

    def tick(self, now: float) -> None:
        """The read clock runs from the last byte read; while the body still goes up, the send clock
        runs instead, from the moment the upstream stopped taking it. When the clock runs out while
        the upstream is held back for a client that stopped reading, the client is the one stalled:
        it is dropped, and the node is not blamed."""
        if self.settled:
            return
        stream = self.stream
        conn = self.conn
        if stream is not None and not stream.done and not self.head_sent:
            if conn.writing_paused and now - conn.paused_at >= self.send_timeout:
                conn._fail(TimeoutError("upstream send timeout"))
            else:
                self.last_read = now
        elif now - self.last_read >= self.read_timeout:
            if not self.client.writable:
                self.client.cut()  # connection_lost ends this exchange as the client's doing
            else:
                conn._fail(TimeoutError("upstream read timeout"))

    def abort(self, exc: BaseException) -> None:
        """End the exchange from our side: the upstream connection is closed, never reused."""
        conn = self.conn
        if conn.sink is self:
            conn.close()
        self._settle(exc)

    def _settle(self, exc: BaseException | None) -> None:
        if self.settled:
            return
        self.settled = True
        client = self.client
        if client.on_writable is not None:
            # the upstream was paused for a slow client and the response ended in the same read: it
            # goes back to the pool (or is closed) and must read again, else the next exchange on it
            # never sees its answer
            client.on_writable = None
            transport = self.conn.transport
            if transport is not None and not self.conn.closed:
                transport.resume_reading()
        if self.callback is not None:
            self.callback(self, exc)
        elif exc is None:
            self.done.set_result(None)  # type: ignore[union-attr]
        else:
            self.done.set_exception(exc)  # type: ignore[union-attr]

    # Sink
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], conn: UpstreamConnection) -> None:
        self.last_read = self.loop.time()
        self.status = status
        ctx = self.ctx
        ctx.status = status
        hooks = ctx.route.chain.header_filter
        if hooks:
            try:
                for hook in hooks:
                    hook(ctx, headers)
            except Exception as exc:
                log.exception("gateway header filter failed", route=ctx.route.ref)
                self.abort(PluginFailure(str(exc)))
                return
            status = ctx.status
        if status == 101:
            self.upgraded = True
            self.client.write(STATUS_LINES[101] + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n")
            self.head_sent = True
            self._settle(None)  # the tunnel takes over
            return
        framed = False
        filters = self.body_filters
        out = [STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
        named = named_in_connection([v for n, v in headers if n == b"connection"])
        for name, value in headers:
            if name in DROP_RESPONSE or name in named:
                continue
            if name == b"content-length":
                if filters:
                    continue  # a body filter may change the length
                framed = True
            out += (name, b": ", value, b"\r\n")
        self._end_head(out, framed, status)

    def _end_head(self, out: list[bytes], framed: bool, status: int) -> None:
        """Add the plugins' headers and the body's framing for the client; the head waits for the body."""
        request = self.ctx.request
        for name, value in self.ctx.response_headers:
            out += (name, b": ", value, b"\r\n")
        if not framed and not (self.head_only or status in NO_BODY_STATUS or status < 200):
            if request.http_version == "1.1":
                self.chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True  # an HTTP/1.0 client: the body ends when the connection does
        out.append(b"connection: close\r\n\r\n" if self.close_after or not request.keep_alive
                   else b"connection: keep-alive\r\n\r\n")
        self.pending = b"".join(out)  # one write with the body that usually comes in the same read

    def on_head_raw(self, status: int, head: bytes, conn: UpstreamConnection) -> None:
        """The lean way (no header filter, no body filter): the upstream's head minus its hop-by-hop lines."""
        line_end = head.find(b"\r\n")
        if status == 101 or line_end < 0:
            self.on_head(status, split_head(head), conn)  # the general way
            return
        self.last_read = self.loop.time()
        self.status = status
        self.ctx.status = status
        lines = HOP_LINES.sub(b"", head[line_end:])  # from the CRLF ending the status line on
        connection = CONNECTION.findall(head)
        named = None
        if connection and (len(connection) > 1 or connection[0].strip().lower() not in PLAIN_CONNECTION):
            named = named_in_connection(connection)
        if named:
            lines = b"".join(b"\r\n" + line for line in lines.split(b"\r\n")[1:]
                             if line.partition(b":")[0].strip().lower() not in named)
        out = [(STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status)[:-2], lines, b"\r\n"]
        self._end_head(out, CONTENT_LENGTH.search(lines) is not None, status)

    def on_whole(self, status: int, lines: bytes, body: bytes) -> None:
        """The express way (a lean route): the whole response in one read, framed by its length,
        its head's lines without the hop-by-hop ones; answered in one write, as ``on_head_raw``,
        ``on_body`` and ``on_end`` would in three calls."""
        ctx = self.ctx
        self.status = ctx.status = status
        ctx.bytes_sent += len(body)
        extra = ctx.response_headers
        self.client.write(b"%s%s\r\n%s%s%s" % (
            (STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status)[:-2], lines,
            b"".join([b"%s: %s\r\n" % header for header in extra]) if extra else b"",
            KEEP_LINES[ctx.request.keep_alive], body))
        self.head_sent = True
        self._settle(None)

    def flush(self) -> None:
        """The upstream's read is consumed: send a head still waiting for its body."""
        if self.pending is not None:
            self.client.write(self.pending)
            self.pending = None
            self.head_sent = True

    def on_body(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        if self.body_filters:
            data = self._filter(data, False)
            if not data:
                return
        self.ctx.bytes_sent += len(data)
        client = self.client
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.pending is not None:
            data = self.pending + data
            self.pending = None
            self.head_sent = True
        client.write(data)
        if client._writable is not None:  # the client reads slower than the upstream sends
            transport = self.conn.transport
            if transport is not None:
                transport.pause_reading()
                client.on_writable = transport.resume_reading

    def on_end(self) -> None:
        out = self.pending or b""
        if self.body_filters and not (self.head_only or self.status in NO_BODY_STATUS):
            tail = self._filter(b"", True)
            if tail:
                self.ctx.bytes_sent += len(tail)
                out += b"%x\r\n%s\r\n" % (len(tail), tail) if self.chunked else tail
        if self.chunked:
            out += b"0\r\n\r\n"
        if out:
            self.client.write(out)
            self.head_sent = True
        self.pending = None
        self._settle(None)

    def _filter(self, data: bytes, last: bool) -> bytes:
        ctx = self.ctx
        try:
            for body_filter in self.body_filters:
                result = body_filter(ctx, data, last)
                if result is not None:
                    data = result
        except Exception as exc:
            log.exception("gateway body filter failed", route=ctx.route.ref)
            self.abort(PluginFailure(str(exc)))
            return b""
        return data

    def on_error(self, exc: BaseException) -> None:
        self._settle(exc)

    def on_tunnel(self, data: bytes) -> None:
        self.client.write(data)


class TryVerdict:
    """One try's permit from the upstream's Resiliency circuit breaker, and what the try told it.
    Whoever sees the outcome first records it (the response head, or the proxy on an error);
    ``record(None)`` gives the permit back without a verdict (the client went away)."""

    __slots__ = ("breaker", "permit", "started")

    def __init__(self, breaker: CircuitBreaker, permit: Permit) -> None:
        self.breaker, self.permit, self.started = breaker, permit, time.monotonic()

    def record(self, failed: bool | None) -> None:
        permit = self.permit
        if permit is None:
            return
        self.permit = None
        if failed is None:
            self.breaker.release(permit)
        elif failed:
            self.breaker.record_failure(time.monotonic() - self.started, permit)
        else:
            self.breaker.record_success(time.monotonic() - self.started, permit)


class GuardedExchange(Exchange):
    """A try against an upstream a Resiliency policy targets. The policy's ``timeout`` bounds the
    wait for the response head, from when the whole request has gone up (a streamed body: at the
    first tick after its end); a body that follows is not cut by it. The head is the breaker's
    verdict: a status the passive check counts is a failure, any other a success."""

    __slots__ = ("failed_statuses", "timeout", "timer", "verdict")

    def __init__(self, client: ClientConnection, ctx: Ctx, conn: UpstreamConnection, balancer: Balancer,
                 policy: ResiliencePolicy, head_only: bool, stream: _BodyStream | None,
                 verdict: TryVerdict | None) -> None:
        super().__init__(client, ctx, conn, balancer.spec.timeout, head_only, stream)
        self.failed_statuses = balancer.failed_statuses
        self.verdict = verdict
        self.timeout = policy.timeout  # None once the head came (or the clock ran out)
        self.timer: asyncio.TimerHandle | None = None
        if self.timeout is not None and (stream is None or stream.done):
            self.timer = self.loop.call_later(self.timeout, self._expire)

    def tick(self, now: float) -> None:
        if self.timeout is not None and self.timer is None and not self.settled and self.stream is not None \
                and self.stream.done:
            self.timer = self.loop.call_later(self.timeout, self._expire)
        super().tick(now)

    def _expire(self) -> None:
        self.timer = None
        if not self.settled and not self.status and self.timeout is not None:
            self.conn._fail(TimeoutExceeded(self.timeout))  # fails the try as a read timeout would

    def _headed(self, status: int) -> None:
        self.timeout = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.verdict is not None:
            self.verdict.record(status in self.failed_statuses)

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], conn: UpstreamConnection) -> None:
        self._headed(status)
        super().on_head(status, headers, conn)

    def on_head_raw(self, status: int, head: bytes, conn: UpstreamConnection) -> None:
        self._headed(status)
        super().on_head_raw(status, head, conn)

    def on_whole(self, status: int, lines: bytes, body: bytes) -> None:
        self._headed(status)
        super().on_whole(status, lines, body)

    def _settle(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timeout = None
        super()._settle(exc)


async def proxy(client: ClientConnection, ctx: Ctx, balancer: Balancer, stream: _BodyStream | None,
                extra_headers: list[tuple[bytes, bytes]] | None = None, *,
                tried: list[NodeState] | None = None, last_error: BaseException | None = None,
                fresh_retry: bool = True, first: NodeState | None = None, again: NodeState | None = None) -> bool:
    """Send the request upstream with retries; True when the client connection may be kept.

    ``tried``, ``last_error`` and ``fresh_retry`` carry on from a first try made by ``start_fast``;
    ``first`` is a node it picked but had no idle connection to; ``again`` a node whose pooled
    connection it found closed, tried again first on a new connection.

    Under a Resiliency policy (``balancer.policy``; ``start_fast`` leaves such upstreams to this
    path) its breaker admits each try or answers 503 itself, its timeout bounds each try's wait for
    the head (``GuardedExchange``), and its retry replaces ``retries``: timed-out tries are retried
    too, after the policy's back-off, on a node not tried yet, else on any."""
    request = ctx.request
    spec = balancer.spec
    ended = client.aborted or (stream.error if stream is not None else None)
    if ended is not None:
        return _client_ended(client, ctx, ended)
    retryable = stream is None and request.method in IDEMPOTENT and not request.upgrade
    policy = balancer.policy
    retry = breaker = None
    tries: float = 1 + (spec.retries if retryable else 0)
    if policy is not None:
        retry, breaker = policy.retry, policy.breaker
        if retry is not None:
            tries = (retry.max_attempts or math.inf) if retryable else 1
    hash_key = ctx.hash_key
    if hash_key is None and balancer.ring is not None:
        hash_key = ctx.hash_key = balancer.key_for(ctx)
    tried = tried if tried is not None else []
    body = request.body if stream is None else None
    length = len(body) if body is not None else request.content_length
    head_only = request.method == "HEAD"
    head = b""
    fresh_retry = fresh_retry and retryable  # one more try on a new connection when a pooled one was stale
    node: NodeState | None = again
    fresh = again is not None and retryable  # the next try: the same node, on a new connection
    if again is not None:
        tried.append(again)
    attempt = len(tried)
    while attempt < tries or fresh:
        if retry is not None and attempt and not fresh:
            await asyncio.sleep(retry.backoff(attempt))  # the policy's back-off before its retry number `attempt`
            if client.aborted is not None:
                return _client_ended(client, ctx, client.aborted)
        verdict = None
        if breaker is not None:
            try:
                verdict = TryVerdict(breaker, breaker.allow())
            except CircuitOpenError as exc:
                return _answer_open(client, ctx, balancer, exc)
        if first is not None:
            node, first = first, None
            node.active -= 1  # start_fast counted it in already (least_conn sees it at once)
            tried.append(node)
            attempt += 1
        elif not fresh or node is None:
            node = balancer.pick(hash_key, tried)
            if node is None and retry is not None and tried:
                node = balancer.pick(hash_key, None)  # the policy retries even when every node was tried
            if node is None:
                if verdict is not None:
                    verdict.record(None)
                break
            tried.append(node)
            attempt += 1
        ctx.node = node
        if not head or spec.pass_host == "node":
            host = request.host if spec.pass_host == "pass" and request.host else (
                spec.upstream_host if spec.pass_host == "rewrite" else node.key)
            head = upstream_head(request, host or node.key, length, stream is not None and stream.chunked,
                                 extra_headers)
        current = node
        current.active += 1
        try:
            conn = None if fresh else node.take()  # after a stale one, not another pooled connection
            fresh = False
            if conn is None:
                try:
                    conn = await node.connect(spec.timeout.connect)
                except (OSError, TimeoutError) as exc:
                    last_error = exc
                    balancer.report(node, False)
                    if verdict is not None:
                        verdict.record(True)
                    node = None
                    continue
            ended = client.aborted or (stream.error if stream is not None else None)
            if ended is not None:
                node.release(conn)
                return _client_ended(client, ctx, ended)
            exchange = Exchange(client, ctx, conn, spec.timeout, head_only, stream) if policy is None else \
                GuardedExchange(client, ctx, conn, balancer, policy, head_only, stream, verdict)
            client.exchange = exchange
            conn.start(exchange, head, body, head_only, ctx.route.lean and not request.upgrade)
            if stream is not None:
                stream.attach(conn)
            try:
                await exchange.done  # type: ignore[misc]
            except ClientAbort as abort:
                return _client_ended(client, ctx, abort, exchange)
            except PluginFailure as exc:
                ctx.status, ctx.error = 500, str(exc)
                if not exchange.head_sent:
                    client.write(problem(500, "the gateway failed on this response").encode(False))
                return False
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                if exchange.status:  # the upstream had answered: no retry
                    balancer.report(node, False)
                    ctx.status, ctx.error = 502, str(exc)
                    if not exchange.head_sent:
                        client.write(problem(502, f"upstream {balancer.name!r} failed mid-response").encode(False))
                    return False  # mid-response: nothing to do but cut the connection
                if (fresh_retry and conn.reused and not conn.response_started
                        and isinstance(exc, ConnectionError)):
                    fresh_retry = False  # a pooled connection the upstream had closed: not the node's fault
                    fresh = True  # so the same node again, on a new connection, without counting a try
                    continue
                last_error = exc
                balancer.report(node, False)
                if verdict is not None:
                    verdict.record(True)
                node = None
                if isinstance(exc, TimeoutError) and retry is None:
                    break  # a read timeout is not retried: the upstream may be working on it
                continue
            finally:
                client.exchange = None
            if exchange.upgraded:
                await _tunnel(client, conn)
                return False
            balancer.report(node, exchange.status not in balancer.bad_statuses, time.monotonic() - exchange.started)
            if stream is not None and not stream.done:
                stream.discard()  # the upstream answered before it had the whole body: that connection is spent
                conn.close()
            else:
                node.release(conn)
            if request.upgrade:
                return False  # a refused upgrade: the client's parser state is gone
            return not exchange.close_after
        finally:
            current.active -= 1
            if verdict is not None:
                verdict.record(None)  # no verdict yet: the client went away, or the try was cut short
    return _answer_error(client, ctx, balancer, last_error)


def start_fast(client: ClientConnection, ctx: Ctx, balancer: Balancer) -> tuple[bool, NodeState | None]:
    """Begin the common case without a task: a buffered request and an idle pooled connection to the
    node the balancer picks. The exchange's end calls ``_fast_done``. (False, the node picked, if
    any): take ``proxy`` instead, starting with that node."""
    if balancer.policy is not None:
        return False, None  # a Resiliency policy's breaker, timeout and back-off live in ``proxy``
    request = ctx.request
    node = balancer.only
    if node is None:
        hash_key = ctx.hash_key
        if hash_key is None and balancer.ring is not None:
            hash_key = ctx.hash_key = balancer.key_for(ctx)
        node = balancer.pick(hash_key, None)
        if node is None:
            return False, None
    conn = node.take()
    if conn is None:
        node.active += 1
        return False, node
    spec = balancer.spec
    host = request.host if spec.pass_host == "pass" and request.host else (
        spec.upstream_host if spec.pass_host == "rewrite" else node.key)
    body = request.body
    head = upstream_head(request, host or node.key, len(body) if body is not None else None, False)
    head_only = request.method == "HEAD"
    node.active += 1
    ctx.node = node
    exchange = Exchange(client, ctx, conn, spec.timeout, head_only, None, _fast_done, ctx.started)
    exchange.node, exchange.balancer = node, balancer
    client.exchange = exchange
    conn.start(exchange, head, body, head_only, ctx.route.lean)  # start_fast never takes an upgrade
    return True, None


def _fast_done(exchange: Exchange, exc: BaseException | None) -> None:
    client, ctx, conn = exchange.client, exchange.ctx, exchange.conn
    node, balancer = exchange.node, exchange.balancer
    assert node is not None and balancer is not None
    node.active -= 1
    client.exchange = None
    gateway = client.gateway
    if exc is None:
        now = time.monotonic()
        if balancer.latencies:
            balancer.report(node, exchange.status not in balancer.bad_statuses, now - exchange.started)
        elif balancer.tracks:  # the passive check alone: a good answer ends a run of failures
            if exchange.status in balancer.bad_statuses:
                balancer.report(node, False)
            else:
                node.fails = 0
        node.release(conn, now)
        if ctx.route.chain.log:
            gateway.complete(client, ctx, not exchange.close_after)
        else:
            client.finished(not exchange.close_after)  # no log phase to run
    elif isinstance(exc, ClientAbort):
        gateway.complete(client, ctx, _client_ended(client, ctx, exc, exchange))
    elif isinstance(exc, PluginFailure):
        ctx.status, ctx.error = 500, str(exc)
        if not exchange.head_sent:
            client.write(problem(500, "the gateway failed on this response").encode(False))
        gateway.complete(client, ctx, False)
    elif exchange.status:  # failed mid-response
        balancer.report(node, False)
        ctx.status, ctx.error = 502, str(exc)
        if not exchange.head_sent:
            client.write(problem(502, f"upstream {balancer.name!r} failed mid-response").encode(False))
        gateway.complete(client, ctx, False)
    else:  # no answer at all: the general path retries as the upstream allows
        stale = conn.reused and not conn.response_started and isinstance(exc, ConnectionError) \
            and ctx.request.method in IDEMPOTENT
        if not stale:
            balancer.report(node, False)
        if isinstance(exc, TimeoutError):
            gateway.complete(client, ctx, _answer_error(client, ctx, balancer, exc))
            return
        gateway.resume(client, ctx, proxy(client, ctx, balancer, None, tried=[] if stale else [node],
                                          last_error=None if stale else exc, fresh_retry=not stale,
                                          again=node if stale else None))


def _answer_error(client: ClientConnection, ctx: Ctx, balancer: Balancer, last_error: BaseException | None) -> bool:
    """Every try failed: 503 (no node), 504 (timeouts) or 502; True: the connection may be kept."""
    request = ctx.request
    if last_error is None:
        reply = problem(503, f"upstream {balancer.name!r} has no node to send to")
    elif isinstance(last_error, TimeoutError):
        reply = problem(504, f"upstream {balancer.name!r} did not answer in time")
    else:
        reply = problem(502, f"upstream {balancer.name!r} failed: {type(last_error).__name__}: {last_error}")
    ctx.status = reply.status
    ctx.error = str(last_error) if last_error else "no node"
    client.answer(reply, request, ctx.response_headers)
    return not request.upgrade


def _answer_open(client: ClientConnection, ctx: Ctx, balancer: Balancer, exc: CircuitOpenError) -> bool:
    """The upstream's Resiliency circuit breaker is open: 503, without asking the upstream."""
    request = ctx.request
    reply = problem(503, f"upstream {balancer.name!r} is unavailable: its circuit breaker is open")
    reply.headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    ctx.status, ctx.error = 503, str(exc)
    client.answer(reply, request, ctx.response_headers)
    return not request.upgrade


def _client_ended(client: ClientConnection, ctx: Ctx, abort: ClientAbort, exchange: Exchange | None = None) -> bool:
    """The client went away or broke a limit: answer the limit if nothing was sent yet; never keep."""
    ctx.status = abort.reply.status if abort.reply is not None else 499  # nginx's "client closed request"
    ctx.error = str(abort)
    if abort.reply is not None and (exchange is None or not exchange.head_sent):
        client.write(abort.reply.encode(False))
    client.close()
    return False


async def _tunnel(client: ClientConnection, conn: UpstreamConnection) -> None:
    """After a 101: bytes flow both ways until either side closes."""
    ended: asyncio.Future[None] = client.loop.create_future()
    client.tunnel = conn
    client.tunnel_ended = ended
    client.deadline = 0.0  # a tunnel has no request timeouts
    conn.attach_tunnel(_TunnelSink(client, ended))
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

    def flush(self) -> None: ...

    def on_error(self, exc: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def on_head(self, *args: Any) -> None: ...
    def on_head_raw(self, *args: Any) -> None: ...
    def on_whole(self, *args: Any) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
