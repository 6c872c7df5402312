"""A small keep-alive HTTP/1.1 client for branch calls to plain ``http://`` URLs.

One asyncio Protocol per connection, answers parsed by httptools (llhttp, in C). Idle connections are
kept per (host, port), the most recently used taken first, and closed after ``keepalive`` seconds
idle or when more than ``idle_per_host`` are idle. A connection carries one request at a time; calls
to one host at the same time use connections of their own.

A request that finds its reused connection closed by the server before any byte of the answer (the
server's keep-alive ran out while it sat idle) is sent once more on a new connection: branch handlers
are idempotent. Once a byte of an answer has arrived, nothing is sent again.

A call's timeout is one ``loop.call_at`` on the future the call waits on; it bounds the whole call,
connecting included. A connection whose call timed out, failed or was cancelled is closed, never
reused.

An answer's body is read up to ``max_body`` bytes (after decoding gzip or deflate); the rest is not
read, and the connection is closed. Request targets, ``Host`` and basic auth from the URL's user
info are what aiohttp sends for the same URL and query parameters (the URL is parsed by yarl, once).
"""

from __future__ import annotations

import asyncio
import base64
import zlib
from typing import Any
from urllib.parse import quote

import httptools
from yarl import URL

IDLE_PER_HOST = 32  # idle connections kept per (host, port); more are closed once answered
SWEEP = 1.0  # seconds between closings of connections idle for too long
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})  # the client's own headers
_DEFAULTS = (("host", ""), ("accept", "Accept: */*\r\n"), ("accept-encoding", "Accept-Encoding: gzip, deflate\r\n"),
             ("authorization", ""))  # sent unless the caller's headers have their own
_OWN = _FRAMING | {name for name, _ in _DEFAULTS}
_SAFE = "?/:@!$'()*,~"  # what yarl leaves unquoted in a query's names and values


class ServerDisconnected(ConnectionError):
    """The server closed the connection before its answer was complete."""


class NoAnswer(ServerDisconnected):
    """The server closed the connection before any byte of an answer."""


class BadAnswer(ConnectionError):
    """What came back is not an HTTP/1.1 answer this client reads."""


class Target:
    """A ``http://`` URL split once: where to connect and the fixed parts of its requests."""

    __slots__ = ("auth", "host", "key", "path", "query")

    def __init__(self, url: str) -> None:
        parsed = URL(url)
        if parsed.scheme != "http" or not parsed.raw_host or parsed.port is None:
            raise ValueError(f"not a plain http URL: {url!r}")
        self.key = (parsed.raw_host, parsed.port)
        self.path = parsed.raw_path or "/"
        self.query = parsed.raw_query_string
        host = parsed.host_port_subcomponent
        if not host:
            raise ValueError(f"no host in {url!r}")
        self.host = host
        self.auth = ""
        if parsed.raw_user or parsed.raw_password:
            user, password = parsed.user or "", parsed.password or ""
            if ":" in user:
                raise ValueError("a colon in the user name of basic auth")  # aiohttp says so: it takes these
            self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode("latin1")).decode()


_targets: dict[str, Target | None] = {}


def target(url: str) -> Target | None:
    """The target of a plain ``http://`` URL; None for any other (``https://``, or not a URL this client
    takes: those calls go through aiohttp, which says what is wrong with them)."""
    found = _targets.get(url, False)
    if found is False:
        try:
            found = Target(url)
        except Exception:
            found = None
        if len(_targets) >= 4096:
            _targets.clear()
        _targets[url] = found
    return found  # type: ignore[return-value]


_quoted: dict[str, str] = {}  # recent names and values, quoted: the same few come back call after call


def _quote(value: str) -> str:
    found = _quoted.get(value)
    if found is None:
        found = quote(value, safe=_SAFE, errors="ignore").replace("%20", "+")
        if len(value) <= 200:
            if len(_quoted) >= 4096:
                _quoted.clear()
            _quoted[value] = found
    return found


def encode_request(to: Target, method: str, params: dict[str, str], headers: dict[str, str],
                   body: bytes | None) -> bytes:
    """The request's bytes: ``params`` after the URL's own query, ``headers`` after the defaults. As
    aiohttp does, a header of the caller's replaces a default of the same name, and the URL's user
    info replaces the caller's ``Authorization``; unlike aiohttp, the framing headers
    (``Content-Length``, ``Transfer-Encoding``, ``Connection``) are always the client's own."""
    if not method.isalpha():
        raise ValueError(f"not a method: {method!r}")
    query = "&".join([f"{_quote(k)}={_quote(v)}" for k, v in params.items()])
    if to.query:
        query = f"{to.query}{'' if to.query.endswith('&') or not query else '&'}{query}"
    lines = [method, " ", to.path, "?" if query else "", query, " HTTP/1.1\r\n"]
    defaults = _DEFAULTS
    for name, value in headers.items():
        if not (name.isprintable() and value.isprintable()) and (
                "\r" in value or "\n" in value or "\r" in name or "\n" in name):
            raise ValueError(f"header {name[:60]!r} cannot go out: a newline in it")
        lowered = name.lower()
        if lowered in _OWN:
            if lowered in _FRAMING or (lowered == "authorization" and to.auth):  # the URL's user info wins
                continue
            defaults = tuple(d for d in defaults if d[0] != lowered)
        lines += (name, ": ", value, "\r\n")
    for name, line in defaults:
        if name == "host":
            lines += ("Host: ", to.host, "\r\n")
        elif name == "authorization":
            if to.auth:
                lines += ("Authorization: ", to.auth, "\r\n")
        else:
            lines.append(line)
    if body is None:
        lines.append("Connection: keep-alive\r\n\r\n")
        return "".join(lines).encode()
    lines += ("Connection: keep-alive\r\nContent-Length: ", str(len(body)), "\r\n\r\n")
    return "".join(lines).encode() + body


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Connection(asyncio.Protocol):
    """One connection to a branch host; one request at a time."""

    def __init__(self, client: Client, key: tuple[str, int]) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.got = False  # a byte of the current answer has arrived
        self.answering = False  # the head of a final (not 1xx) answer has arrived
        self.framed = False  # that answer has a Content-Length or is chunked (not ended by the close)
        self.inflate: Any = None  # a zlib decompressor while the answer is gzip or deflate
        self.encoding = b""
        self.pooled = False
        self.idle_since = 0.0

    # asyncio ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is no longer one to trust
            self.abort()
            return
        self.got = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"unreadable answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close: a half-closed connection carries no further answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.forget(self)
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None and self.answering and not self.framed:  # an answer the close ends
            try:
                waiter.set_result((self.status, self._body()))
            except zlib.error as error:
                waiter.set_exception(BadAnswer(f"undecodable body: {error}"))
            return
        if not self.got:
            error: ServerDisconnected = NoAnswer("the server closed the connection without answering")
        else:
            error = ServerDisconnected("the server closed the connection in the middle of its answer")
        error.__cause__ = exc
        waiter.set_exception(error)

    # httptools ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second answer to one request
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 16, 17):
            name = name.lower()
            if name == b"content-length" or name == b"transfer-encoding":
                self.framed = True
            elif name == b"content-encoding":
                self.encoding = value.strip().lower()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status >= 200:
            self.answering = True
            if self.encoding and self.encoding != b"identity" and self.waiter is not None:
                if self.encoding in (b"gzip", b"x-gzip"):
                    self.inflate = zlib.decompressobj(31)
                elif self.encoding == b"deflate":
                    self.inflate = zlib.decompressobj(15)
                else:
                    self._fail(BadAnswer(f"unsupported content-encoding {self.encoding.decode(errors='replace')}"))

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:
            return
        if self.inflate is not None:
            try:
                body = self._decode(body)
            except zlib.error as exc:
                self._fail(BadAnswer(f"undecodable body: {exc}"))
                return
        self.chunks.append(body)
        self.size += len(body)
        if self.size >= self.client.max_body:  # enough: the rest is not read
            waiter, self.waiter = self.waiter, None
            if not waiter.done():
                waiter.set_result((self.status, b"".join(self.chunks)[:self.client.max_body]))
            self.abort()

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is None:
            return
        if not self.answering:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self.encoding, self.framed = b"", False
            return
        self.waiter = None
        if waiter.done():  # timed out or cancelled meanwhile
            self.abort()
            return
        try:
            body = self._body()
        except zlib.error as exc:
            waiter.set_exception(BadAnswer(f"undecodable body: {exc}"))
            self.abort()
            return
        waiter.set_result((self.status, body))
        if self.parser.should_keep_alive():
            self.client.keep(self)
        else:
            self.abort()

    # the client's side --------------------------------------------------------------------------

    def send(self, waiter: asyncio.Future[tuple[int, bytes]], raw: bytes) -> None:
        self.waiter = waiter
        self.chunks = []
        self.size = self.status = 0
        self.got = self.answering = self.framed = False
        self.inflate, self.encoding = None, b""
        try:
            self.transport.write(raw)  # type: ignore[union-attr]
        except (RuntimeError, OSError) as exc:  # closed under us (uvloop raises): nothing went out
            error = NoAnswer(f"the connection closed before the request went out: {exc}")
            error.__cause__ = exc
            self._fail(error)

    def connected(self, waiter: asyncio.Future[tuple[int, bytes]], raw: bytes, task: asyncio.Task[Any]) -> None:
        """The connect ended: send, or say why not."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if not waiter.done():
                waiter.set_exception(exc)
        elif waiter.done():  # timed out or cancelled meanwhile
            self.abort()
        else:
            self.send(waiter, raw)

    def abort(self) -> None:
        self.waiter = None
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def _decode(self, body: bytes) -> bytes:
        room = max(self.client.max_body - self.size, 1)
        try:
            return self.inflate.decompress(body, room)  # type: ignore[no-any-return]
        except zlib.error:
            if self.encoding != b"deflate" or self.size or self.inflate.unused_data:
                raise
            self.inflate = zlib.decompressobj(-15)  # deflate sent without its zlib wrapper, as some servers do
            return self.inflate.decompress(body, room)  # type: ignore[no-any-return]

    def _body(self) -> bytes:
        body = b"".join(self.chunks)
        if self.inflate is not None:
            body += self.inflate.flush()
        return body[:self.client.max_body]


class Client:
    """Keep-alive connections to plain HTTP hosts, and requests over them."""

    def __init__(self, *, max_body: int, keepalive: float, idle_per_host: int = IDLE_PER_HOST) -> None:
        self.max_body = max_body
        self.keepalive = keepalive
        self.idle_per_host = idle_per_host
        self.idle: dict[tuple[str, int], list[Connection]] = {}  # oldest first
        self.conns: set[Connection] = set()  # every open connection, idle or not
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, to: Target, raw: bytes, timeout: float) -> tuple[int, bytes]:
        """Send ``raw`` (a whole request) to ``to``'s host; the answer's status and body. Raises
        TimeoutError when ``timeout`` runs out, OSError when the connection fails."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self._rebind(loop)
        deadline = loop.time() + timeout
        conn = self._take(to.key, loop.time())
        if conn is not None:
            waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter)
            conn.send(waiter, raw)
            try:
                return await waiter
            except NoAnswer:
                pass  # the server closed the idle connection meanwhile: once more on a new one
            except BaseException:
                conn.abort()
                raise
            finally:
                timer.cancel()
        return await self._fresh(loop, to.key, raw, deadline)

    async def _fresh(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int], raw: bytes,
                     deadline: float) -> tuple[int, bytes]:
        conn = Connection(self, key)
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        connecting = loop.create_task(loop.create_connection(lambda: conn, key[0], key[1]))
        connecting.add_done_callback(lambda task: conn.connected(waiter, raw, task))
        try:
            return await waiter
        except BaseException:
            connecting.cancel()
            conn.abort()
            raise
        finally:
            timer.cancel()

    def _take(self, key: tuple[str, int], now: float) -> Connection | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            conn.pooled = False
            if now - conn.idle_since < self.keepalive and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
            conn.abort()
        return None

    def keep(self, conn: Connection) -> None:
        """``conn`` answered and may carry another request: keep it idle, if there is room."""
        idle = self.idle.get(conn.key)
        if idle is None:
            idle = self.idle[conn.key] = []
        if len(idle) >= self.idle_per_host or conn.transport is None or conn.transport.is_closing():
            conn.abort()
            return
        conn.pooled = True
        conn.idle_since = self.loop.time()  # type: ignore[union-attr]
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)  # type: ignore[union-attr]

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed."""
        self.conns.discard(conn)
        if conn.pooled:
            conn.pooled = False
            idle = self.idle.get(conn.key)
            if idle is not None and conn in idle:
                idle.remove(conn)

    def _sweep(self) -> None:
        """Close the connections idle for ``keepalive`` seconds or more."""
        self._sweeper = None
        old = self.loop.time() - self.keepalive  # type: ignore[union-attr]
        for key, idle in list(self.idle.items()):
            ended = 0
            while ended < len(idle) and idle[ended].idle_since <= old:
                ended += 1
            expired, idle[:ended] = idle[:ended], []
            for conn in expired:
                conn.pooled = False
                conn.transport.close()  # type: ignore[union-attr]
            if not idle:
                del self.idle[key]
        if self.idle:
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)  # type: ignore[union-attr]

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """First use, or use on another event loop: the connections of the old one are not usable."""
        if self.loop is not None and not self.loop.is_closed():
            self.close()
        self.idle.clear()
        self.conns.clear()
        self._sweeper = None
        self.loop = loop

    def close(self) -> None:
        """Close every connection (calls waiting on one fail)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.conns):
            conn.pooled = False
            conn.abort()
        self.idle.clear()
