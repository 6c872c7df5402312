"""The branch calls' own HTTP/1.1 client against scripted asyncio servers: keep-alive, resends,
timeouts, framing of answers, the body cap, idle connections."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from yarl import URL

from mezzo.transactions import httpclient
from mezzo.transactions.calls import MAX_BODY, BranchCaller, Outcome, Result, classify
from mezzo.transactions.httpclient import BadAnswer, Client, NoAnswer, encode_request, target

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n{\"dtm_result\":\"SUCCESS\"}"
SUCCESS = classify(200, b'{"dtm_result":"SUCCESS"}')
LONG = 3600.0  # a keep-alive no test outlives


class Peer:
    """One accepted connection, as the server sees it."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.closed = asyncio.Event()  # the client closed it (the server read its end)

    async def read_request(self) -> bytes | None:
        """One whole request, or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
            return None
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return head + await self.reader.readexactly(length)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def wait_closed(self) -> None:
        """Until the client closes the connection (reading and dropping whatever else comes)."""
        while not self.closed.is_set():
            try:
                if not await self.reader.read(65536):
                    self.closed.set()
            except ConnectionError:
                self.closed.set()


T = TypeVar("T")
Script = Callable[["Server", Peer], Awaitable[None]]  # drives one connection; the server closes it after


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.peers: list[Peer] = []
        self.requests: list[tuple[int, bytes]] = []  # (connection index, request)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.script(self, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def request(self, peer: Peer) -> bytes | None:
        request = await peer.read_request()
        if request is not None:
            self.requests.append((peer.index, request))
        return request


async def serve(script: Script) -> AsyncIterator[Server]:
    server = Server(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def answering(*raws: bytes) -> Script:
    """Answer every request on a connection with ``raws`` (written one after the other), keeping it open."""
    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            for raw in raws:
                await peer.send(raw)
    return script


def caller_() -> BranchCaller:
    """A caller whose idle connections outlive any test (a connection a test waits to see closed is
    closed for the reason the test is about, not because it idled out)."""
    caller = BranchCaller()
    caller._plain.keepalive = LONG
    return caller


def plain(url: str) -> tuple[httpclient.Target, bytes]:
    """The target of ``url``, and a GET of it."""
    to = target(url)
    assert to is not None
    return to, encode_request(to, "GET", {}, {}, None)


async def call(caller: BranchCaller, url: str, timeout: float = 5, method: str = "POST") -> Result:
    return await caller.call(method, url, params={"gid": "g1", "op": "action"}, data='{"a":1}', timeout=timeout,
                             headers={"traceparent": "00-ab-cd-01"})


async def within(awaitable: Awaitable[T], what: str) -> T:
    """What ``awaitable`` gives, or raises; a test failure if it has not ended in a generous while
    (so a broken client fails the test instead of hanging it)."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.wait({task}, timeout=10)
    if not task.done():
        task.cancel()
        pytest.fail(f"never happened: {what}")
    return task.result()


@pytest.fixture
async def ok_server() -> AsyncIterator[Server]:
    async for server in serve(answering(OK)):
        yield server


# keep-alive ---------------------------------------------------------------------------------------


async def test_sequential_calls_share_one_connection_and_the_request_is_framed(ok_server: Server) -> None:
    caller = caller_()
    try:
        for _ in range(5):
            assert await call(caller, ok_server.url + "/busi/out") == SUCCESS
        assert caller._session is None  # plain http went by the client, not aiohttp
    finally:
        await caller.aclose()
    assert len(ok_server.peers) == 1 and len(ok_server.requests) == 5
    request = ok_server.requests[0][1]
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /busi/out?gid=g1&op=action HTTP/1.1"
    assert f"Host: 127.0.0.1:{ok_server.port}".encode() in lines
    assert {b"Content-Type: application/json", b"traceparent: 00-ab-cd-01", b"Connection: keep-alive",
            b"Content-Length: 7", b"Accept: */*", b"Accept-Encoding: gzip, deflate"} <= set(lines)
    assert body == b'{"a":1}'
    assert not any(line.lower().startswith(b"user-agent") for line in lines)


async def test_a_get_has_no_body_and_no_content_length(ok_server: Server) -> None:
    caller = caller_()
    try:
        assert await call(caller, ok_server.url + "/q", method="GET") == SUCCESS
    finally:
        await caller.aclose()
    head = ok_server.requests[0][1]
    assert head.startswith(b"GET /q?gid=g1&op=action HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    assert b"content-length" not in head.lower() and b"content-type" not in head.lower()


async def test_concurrent_calls_to_one_host_use_separate_connections() -> None:
    """The server answers only once it holds all five requests: calls queued on one connection never would."""
    everyone = asyncio.Event()

    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            if len(server.requests) == 5:
                everyone.set()
            await everyone.wait()
            await peer.send(OK)

    async for server in serve(script):
        caller = caller_()
        try:
            results = await asyncio.gather(*(call(caller, server.url) for _ in range(5)))
            assert results == [SUCCESS] * 5
            for _ in range(5):  # then one after the other: on the idle ones, no new connection
                assert await call(caller, server.url) == SUCCESS
        finally:
            await caller.aclose()
        assert len(server.peers) == 5
        assert len({index for index, _ in server.requests}) == 5


async def test_the_most_recently_used_idle_connection_goes_first() -> None:
    """Two calls at once; connection 0 answers first, then 1: the next call goes on 1."""
    turn = [asyncio.Event(), asyncio.Event()]

    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            if len(server.requests) == 2:
                turn[0].set()
            if len(server.requests) <= 2:
                await turn[peer.index].wait()
            await peer.send(OK)
            if peer.index == 0:
                turn[1].set()

    async for server in serve(script):
        client = Client(max_body=MAX_BODY, keepalive=LONG)
        to, raw = plain(server.url)
        try:
            await asyncio.gather(client.request(to, raw, 5), client.request(to, raw, 5))
            await client.request(to, raw, 5)
        finally:
            client.close()
        assert [index for index, _ in server.requests][2] == 1


async def test_idle_connections_over_the_cap_are_closed() -> None:
    async for server in serve(answering(OK)):
        client = Client(max_body=MAX_BODY, keepalive=LONG, idle_per_host=2)
        to, raw = plain(server.url)
        try:
            await asyncio.gather(*(client.request(to, raw, 5) for _ in range(4)))
            assert len(client.idle[to.key]) == 2
            kept = {_peer(server, conn) for conn in client.idle[to.key]}
            closing = [peer for peer in server.peers if peer not in kept]
            assert len(closing) == 2
            await within(asyncio.gather(*(p.closed.wait() for p in closing)), "the two over the cap closed")
        finally:
            client.close()
        assert len(server.peers) == 4


def _peer(server: Server, conn: httpclient.Connection) -> Peer:
    """The server's side of a client connection (matched by the client's local port)."""
    assert conn.transport is not None
    port = conn.transport.get_extra_info("sockname")[1]
    return next(p for p in server.peers if p.writer.get_extra_info("peername")[1] == port)


async def test_an_idle_connection_is_closed_after_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpclient, "SWEEP", 0.05)
    async for server in serve(answering(OK)):
        client = Client(max_body=MAX_BODY, keepalive=0.1)
        to, raw = plain(server.url)
        try:
            await client.request(to, raw, 5)
            await within(server.peers[0].closed.wait(), "the idle connection closed by the client")
            assert client.idle == {} and client.conns == set()
        finally:
            client.close()


async def test_a_connection_idle_too_long_is_not_used_even_before_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpclient, "SWEEP", 3600.0)
    async for server in serve(answering(OK)):
        client = Client(max_body=MAX_BODY, keepalive=0.05)
        to, raw = plain(server.url)
        try:
            await client.request(to, raw, 5)
            await asyncio.sleep(0.1)
            await client.request(to, raw, 5)
            await within(server.peers[0].closed.wait(), "the stale connection closed")
        finally:
            client.close()
        assert [index for index, _ in server.requests] == [0, 1]


async def test_aclose_closes_the_idle_connections(ok_server: Server) -> None:
    caller = caller_()
    assert await call(caller, ok_server.url) == SUCCESS
    await caller.aclose()
    await within(ok_server.peers[0].closed.wait(), "the pooled connection closed on aclose")


# resends ------------------------------------------------------------------------------------------


def closing_on(requests: set[int]) -> Script:
    """Answer OK, except that the n-th request the server gets (over all connections, from 1) is
    read and the connection closed without a byte of answer."""
    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            if len(server.requests) in requests:
                return
            await peer.send(OK)
    return script


async def test_a_reused_connection_closed_before_answering_is_resent_once_on_a_new_one() -> None:
    async for server in serve(closing_on({2})):
        caller = caller_()
        try:
            assert await call(caller, server.url) == SUCCESS
            assert await call(caller, server.url) == SUCCESS
        finally:
            await caller.aclose()
        assert [index for index, _ in server.requests] == [0, 0, 1]
        assert server.requests[1][1] == server.requests[2][1]


async def test_the_resend_is_only_one() -> None:
    async for server in serve(closing_on({2, 3})):
        caller = caller_()
        try:
            assert await call(caller, server.url) == SUCCESS
            result = await call(caller, server.url)
        finally:
            await caller.aclose()
        assert result.outcome is Outcome.ERROR and "NoAnswer" in result.detail
        assert [index for index, _ in server.requests] == [0, 0, 1]


async def test_a_new_connection_closed_before_answering_is_not_resent() -> None:
    async for server in serve(closing_on({1})):
        caller = caller_()
        try:
            result = await call(caller, server.url)
        finally:
            await caller.aclose()
        assert result.outcome is Outcome.ERROR and "NoAnswer" in result.detail
        assert len(server.requests) == 1


async def test_nothing_is_resent_after_a_byte_of_the_answer() -> None:
    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            if len(server.requests) == 2:
                await peer.send(b"HTTP/1.1 200 OK\r\nContent-Len")
                return
            await peer.send(OK)

    async for server in serve(script):
        caller = caller_()
        try:
            assert await call(caller, server.url) == SUCCESS
            result = await call(caller, server.url)
        finally:
            await caller.aclose()
        assert result.outcome is Outcome.ERROR and "ServerDisconnected" in result.detail
        assert len(server.requests) == 2 and len(server.peers) == 1


async def test_an_interim_answer_counts_as_a_byte_of_the_answer() -> None:
    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            if len(server.requests) == 2:
                await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            await peer.send(OK)

    async for server in serve(script):
        client = Client(max_body=MAX_BODY, keepalive=LONG)
        to, raw = plain(server.url)
        try:
            await client.request(to, raw, 5)
            with pytest.raises(httpclient.ServerDisconnected) as raised:
                await client.request(to, raw, 5)
            assert not isinstance(raised.value, NoAnswer)
        finally:
            client.close()
        assert len(server.requests) == 2


# timeouts and cancellation ------------------------------------------------------------------------


async def test_a_timeout_closes_the_connection_and_the_next_call_opens_another() -> None:
    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            if len(server.requests) == 2:
                await peer.wait_closed()
                return
            await peer.send(OK)

    async for server in serve(script):
        caller = caller_()
        try:
            assert await call(caller, server.url) == SUCCESS
            result = await within(call(caller, server.url, timeout=0.2), "the call's end")
            assert result == Result(Outcome.ERROR, "timed out after 0.2 s")
            await within(server.peers[0].closed.wait(), "the timed-out connection closed")
            assert await call(caller, server.url) == SUCCESS
        finally:
            await caller.aclose()
        assert [index for index, _ in server.requests] == [0, 0, 1]


async def test_the_timeout_bounds_the_connect_too() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def never_connects(*args: object, **kwargs: object) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    client = Client(max_body=MAX_BODY, keepalive=LONG)
    to, raw = plain("http://127.0.0.1:9/")
    original = loop.create_connection
    loop.create_connection = never_connects  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(TimeoutError):
            await within(client.request(to, raw, 0.1), "the timeout")
    finally:
        loop.create_connection = original  # type: ignore[method-assign]
        client.close()
    assert started.is_set()
    await within(cancelled.wait(), "the connect cancelled")


async def test_a_cancelled_call_closes_its_connection() -> None:
    answered = asyncio.Event()

    async def script(server: Server, peer: Peer) -> None:
        await server.request(peer)
        answered.set()
        await peer.wait_closed()

    async for server in serve(script):
        caller = caller_()
        task = asyncio.create_task(call(caller, server.url))
        await within(answered.wait(), "the request arrived")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await within(server.peers[0].closed.wait(), "the cancelled call's connection closed")
        assert caller._plain.idle == {}
        await caller.aclose()


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = self.refuses = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if self.refuses:
            raise RuntimeError("unable to perform operation: the handler is closed")  # as uvloop's
        self.written.append(data)

    def abort(self) -> None:
        self.closed = True

    close = abort

    def is_closing(self) -> bool:
        return self.closed


async def test_an_answer_that_comes_after_the_timeout_is_not_kept() -> None:
    """The timer fired, and the answer arrives before the call resumes: the connection is closed."""
    client = Client(max_body=MAX_BODY, keepalive=LONG)
    client.loop = asyncio.get_running_loop()
    conn = httpclient.Connection(client, ("127.0.0.1", 9))
    transport = Recording()
    conn.connection_made(transport)
    waiter: asyncio.Future[tuple[int, bytes]] = client.loop.create_future()
    conn.send(waiter, b"GET / HTTP/1.1\r\n\r\n")
    assert transport.written == [b"GET / HTTP/1.1\r\n\r\n"]
    httpclient._expire(waiter)
    conn.data_received(OK)
    assert transport.closed and client.idle == {}
    with pytest.raises(TimeoutError):
        waiter.result()


async def test_a_request_a_closed_transport_refuses_is_one_no_answer_was_sent_to() -> None:
    client = Client(max_body=MAX_BODY, keepalive=LONG)
    conn, transport = httpclient.Connection(client, ("127.0.0.1", 9)), Recording()
    conn.connection_made(transport)
    transport.refuses = True
    waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
    conn.send(waiter, b"GET / HTTP/1.1\r\n\r\n")
    assert transport.closed
    with pytest.raises(NoAnswer):  # so a reused connection's request goes once more on a new one
        waiter.result()


# answers ------------------------------------------------------------------------------------------


async def one_answer(*raws: bytes, keep: bool = True, client: Client | None = None) -> tuple[tuple[int, bytes], Server]:
    """What the client reads from ``raws``, written one after the other, and the server."""
    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            for raw in raws:
                await peer.send(raw)
            if not keep:
                return

    async for server in serve(script):
        client = client or Client(max_body=MAX_BODY, keepalive=LONG)
        to, raw = plain(server.url)
        try:
            return await client.request(to, raw, 5), server
        finally:
            client.close()
    raise AssertionError("unreachable")


async def test_content_length_chunked_and_close_delimited_bodies() -> None:
    assert (await one_answer(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhel", b"lo"))[0] == (201, b"hello")
    chunked = b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    assert (await one_answer(chunked))[0] == (409, b"abcdefg")
    assert (await one_answer(b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"the end", keep=False))[0] == (200, b"until the end")
    closes = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the close"
    assert (await one_answer(closes, keep=False))[0] == (200, b"to the close")


async def test_answers_that_end_the_connection_are_not_reused() -> None:
    for raw in (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"):
        async for server in serve(answering(raw)):
            client = Client(max_body=MAX_BODY, keepalive=LONG)
            to, request = plain(server.url)
            try:
                for _ in range(2):
                    assert await client.request(to, request, 5) == (200, b"ok")
            finally:
                client.close()
            assert len(server.peers) == 2, raw


async def test_a_body_cut_short_is_an_error() -> None:
    for raw in (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nnot fifty",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"):
        with pytest.raises(httpclient.ServerDisconnected):
            await one_answer(raw, keep=False)


async def test_interim_answers_are_skipped() -> None:
    answer, _ = await one_answer(b"HTTP/1.1 100 Continue\r\n\r\n",
                                      b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\nContent-Length: 9\r\n\r\n", OK)
    assert answer == (200, b'{"dtm_result":"SUCCESS"}')


async def test_a_body_is_read_up_to_the_cap_and_the_connection_closed() -> None:
    """Over the cap, the first ``max_body`` bytes are the answer (as aiohttp's reading did): the rest is
    never waited for, and the connection is not kept."""
    async def script(server: Server, peer: Peer) -> None:
        await server.request(peer)
        await peer.send(b"HTTP/1.1 500 Oops\r\nContent-Length: 1000\r\n\r\n" + b"x" * 150)
        await peer.wait_closed()  # the other 850 bytes never come

    async for server in serve(script):
        client = Client(max_body=100, keepalive=LONG)
        to, raw = plain(server.url)
        try:
            answer = await within(client.request(to, raw, 30), "the answer")
            assert answer == (500, b"x" * 100)
            await within(server.peers[0].closed.wait(), "the connection over the cap closed")
            assert client.idle == {}
        finally:
            client.close()


async def test_the_cap_counts_the_decoded_body() -> None:
    packed = gzip.compress(b"y" * 5000)
    answer, _ = await one_answer(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
                                 + packed, client=Client(max_body=1000, keepalive=LONG))
    assert answer == (200, b"y" * 1000)


async def test_gzip_and_deflate_bodies_are_decoded() -> None:
    body = b'{"dtm_result":"FAILURE"}'
    raw_deflate = zlib.compressobj(wbits=-15)
    for encoding, packed in ((b"gzip", gzip.compress(body)), (b"deflate", zlib.compress(body)),
                             (b"deflate", raw_deflate.compress(body) + raw_deflate.flush())):
        answer, _ = await one_answer(b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
                                     % (encoding, len(packed)) + packed)
        assert answer == (200, body), encoding
    with pytest.raises(BadAnswer):
        await one_answer(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nxx")


async def test_what_is_not_http_is_an_error_and_the_connection_closed() -> None:
    for raw in (b"SSH-2.0-OpenSSH\r\n\r\n",
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"):
        async def script(server: Server, peer: Peer, raw: bytes = raw) -> None:
            await server.request(peer)
            await peer.send(raw)
            await peer.wait_closed()

        async for server in serve(script):
            client = Client(max_body=MAX_BODY, keepalive=LONG)
            to, raw = plain(server.url)
            try:
                with pytest.raises(BadAnswer):
                    await client.request(to, raw, 5)
                await within(server.peers[0].closed.wait(), "the connection closed")
            finally:
                client.close()


async def test_a_second_answer_to_one_request_drops_the_connection() -> None:
    async for server in serve(answering(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")):
        client = Client(max_body=MAX_BODY, keepalive=LONG)
        to, raw = plain(server.url)
        try:
            assert await client.request(to, raw, 5) == (200, OK[-24:])
            await within(server.peers[0].closed.wait(), "the connection closed")
            assert client.idle.get(to.key, []) == []
        finally:
            client.close()


async def test_an_idle_connection_that_receives_bytes_is_not_reused() -> None:
    async def script(server: Server, peer: Peer) -> None:
        while await server.request(peer) is not None:
            await peer.send(OK)
            await asyncio.sleep(0.05)
            await peer.send(b"garbage")

    async for server in serve(script):
        client = Client(max_body=MAX_BODY, keepalive=LONG)
        to, raw = plain(server.url)
        try:
            await client.request(to, raw, 5)
            await within(server.peers[0].closed.wait(), "the connection that spoke out of turn closed")
            assert await client.request(to, raw, 5) == (200, b'{"dtm_result":"SUCCESS"}')
        finally:
            client.close()
        assert len(server.peers) == 2


# requests -----------------------------------------------------------------------------------------


QUERY_VALUES = ["plain", "g 0", "a+b", "a&b=c", "50%", "ä€😀", "/:?@", "semi;colon", "#frag", "[x]", "!$'()*,~",
                "tab\there", "", "\x00", "trans_type"]


@pytest.mark.parametrize("url", ["http://h/p", "http://h/p?x=1", "http://h/p?x=1&", "http://h/p?", "http://h",
                                 "http://h:8080/a%20b/c\u00e4?q=%41#frag", "http://[::1]:81/v6"])
def test_the_request_target_is_what_aiohttp_sends(url: str) -> None:
    to = target(url)
    assert to is not None
    for value in QUERY_VALUES:
        params = {"gid": value, value or "empty": "1"}
        line = encode_request(to, "GET", params, {}, None).split(b"\r\n")[0]
        assert line == f"GET {URL(url).extend_query(params).raw_path_qs} HTTP/1.1".encode(), (url, value)
    assert encode_request(to, "GET", {}, {}, None).split(b"\r\n")[0] == f"GET {URL(url).raw_path_qs} HTTP/1.1".encode()


def test_host_header_and_the_connect_address() -> None:
    cases = {"http://h/p": ("h", 80, "h"), "http://h:8080/": ("h", 8080, "h:8080"),
             "http://[::1]:81/": ("::1", 81, "[::1]:81"), "http://B\u00fccher.example/": ("xn--bcher-kva.example", 80,
                                                                                       "xn--bcher-kva.example")}
    for url, (host, port, header) in cases.items():
        to = target(url)
        assert to is not None and to.key == (host, port) and to.host == header, url


def test_urls_this_client_leaves_to_aiohttp() -> None:
    for url in ("https://h/p", "ftp://h/p", "http://127.0.0.1:99999/", "http:///nohost", "not a url", "http://a%3Ab:c@h/"):
        assert target(url) is None, url


def test_caller_headers_replace_defaults_and_never_the_framing() -> None:
    to = target("http://u:p@h/x")
    assert to is not None
    raw = encode_request(to, "POST", {}, {"host": "virtual", "Accept": "application/json", "Content-Length": "99",
                                          "Transfer-Encoding": "chunked", "Connection": "close"}, b"{}")
    lines = raw.split(b"\r\n")
    assert b"host: virtual" in lines and b"Host: h" not in lines
    assert b"Accept: application/json" in lines and b"Accept: */*" not in lines
    assert b"Authorization: Basic dTpw" in lines
    assert b"Content-Length: 2" in lines and b"Content-Length: 99" not in lines
    assert not any(b"chunked" in line or b"close" in line for line in lines)
    lines = encode_request(to, "GET", {}, {"authorization": "Bearer x"}, None).split(b"\r\n")
    assert b"Authorization: Basic dTpw" in lines and b"authorization: Bearer x" not in lines  # as aiohttp
    no_auth = target("http://h/x")
    assert no_auth is not None
    assert b"\r\nauthorization: Bearer x\r\n" in encode_request(no_auth, "GET", {}, {"authorization": "Bearer x"}, None)
    with pytest.raises(ValueError):
        encode_request(to, "POST", {}, {"X-Evil": "a\r\nInjected: 1"}, b"")
    with pytest.raises(ValueError):
        encode_request(to, "POST", {}, {"X-Evil\n": "a"}, b"")
    assert b"\r\nX-Tab: a\tb\r\n" in encode_request(to, "GET", {}, {"X-Tab": "a\tb"}, None)
