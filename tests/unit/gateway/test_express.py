"""The data plane's express lanes give the same bytes as the general way.

A request head that arrives whole in one read is checked by llhttp without a Python call per header
and its lines go upstream as they came (``ClientConnection._express``); a response that arrives
whole in one read, framed by its length, goes to the client in one write (``UpstreamConnection._whole``).
Both must be invisible: the same request split over two reads, or the same response split over two
reads, takes the general way, and the bytes each side sees must be identical.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mezzo.gateway.client import ClientConnection, Limits
from mezzo.gateway.http import Request, upstream_head
from mezzo.gateway.model import RouteSpec, UpstreamSpec
from mezzo.gateway.runtime import Gateway
from mezzo.gateway.upstream import UpstreamConnection

from .fakes import OK, Transport


class Plane:
    """A gateway with one route to one node, driven by hand (no sockets), inside a running loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.gateway = Gateway(Limits())
        self.gateway.changed("Upstream", "ADDED", "default", "up",
                             UpstreamSpec.model_validate({"nodes": [{"host": "10.0.0.1", "port": 80}]}), 1)
        self.gateway.changed("Route", "ADDED", "default", "r",
                             RouteSpec.model_validate({"paths": ["/*"], "upstream": "up"}), 1)
        self.gateway._apply()
        self.node = self.gateway.snapshot.upstreams["default/up"].nodes[0]

    def run(self, call: Any, *args: Any) -> Any:
        async def inside() -> Any:
            return call(*args)
        return self.loop.run_until_complete(inside())

    def connection(self) -> tuple[ClientConnection, Transport, UpstreamConnection, Transport]:
        return self.run(self._connection)  # type: ignore[no-any-return]

    def exchange(self, *args: Any) -> tuple[bytes, bytes]:
        return self.run(self._exchange, *args)  # type: ignore[no-any-return]

    def _connection(self) -> tuple[ClientConnection, Transport, UpstreamConnection, Transport]:
        conn = UpstreamConnection(self.node)
        upstream = Transport()
        conn.connection_made(upstream)  # type: ignore[arg-type]
        self.node.idle[:] = [conn]
        client = ClientConnection(self.gateway)
        transport = Transport()
        client.connection_made(transport)  # type: ignore[arg-type]
        return client, transport, conn, upstream

    def _exchange(self, request: bytes, response: bytes, split_request: bool, split_response: bool) -> tuple[bytes, bytes]:
        """What the upstream and the client receive for one request and its answer."""
        client, transport, conn, upstream = self._connection()
        if split_request:
            client.data_received(request[:1])
            client.data_received(request[1:])
        else:
            client.data_received(request)
        if upstream.out:
            if split_response:
                conn.data_received(response[:1])
                conn.data_received(response[1:])
            else:
                conn.data_received(response)
        return bytes(upstream.out), bytes(transport.out)


@pytest.fixture
def plane() -> Any:
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete(_make(loop))
    finally:
        loop.close()


async def _make(loop: asyncio.AbstractEventLoop) -> Plane:
    return Plane(loop)


def _case(name: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([name, name.upper(), name.title(), name.capitalize()])


VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=0, max_size=12).map(
    lambda s: s.encode())
HEADER = st.one_of(
    st.tuples(_case(b"accept"), VALUE),
    st.tuples(_case(b"x-custom"), VALUE),
    st.tuples(_case(b"cookie"), st.just(b"a=1; b=2")),
    st.tuples(_case(b"connection"), st.sampled_from([b"keep-alive", b"close", b"Keep-Alive", b"upgrade", b"x-a"])),
    st.tuples(_case(b"x-forwarded-for"), st.just(b"192.0.2.7")),
    st.tuples(_case(b"x-a"), VALUE),
    st.tuples(_case(b"te"), st.just(b"trailers")),
    st.tuples(_case(b"keep-alive"), st.just(b"timeout=5")),
    st.tuples(_case(b"content-length"), st.just(b"0")),
    st.tuples(_case(b"expect"), st.just(b"100-continue")),
)
TARGET = st.sampled_from([b"/", b"/a/b", b"/a%2Fb?x=1&y=%20", b"/a/../b", b"//c?q", b"/s p"[:2] + b"x"])


def _request(method: bytes, target: bytes, version: bytes, host: bytes | None, headers: list[tuple[bytes, bytes]],
             host_at: int) -> bytes:
    lines = [b"%s: %s" % pair for pair in headers]
    if host is not None:
        lines.insert(min(host_at, len(lines)), b"Host: " + host)
    return b"%s %s %s\r\n" % (method, target, version) + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from([b"GET", b"HEAD", b"DELETE", b"POST", b"OPTIONS"]), target=TARGET,
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), host=st.sampled_from([b"gw.test", b"gw.test:8080 ", None]),
       headers=st.lists(HEADER, max_size=6), host_at=st.integers(0, 6))
def test_a_request_head_in_one_read_goes_up_as_it_would_in_two(plane: Plane, method: bytes, target: bytes,
                                                                version: bytes, host: bytes | None,
                                                                headers: list[tuple[bytes, bytes]],
                                                                host_at: int) -> None:
    request = _request(method, target, version, host, headers, host_at)
    (up_whole, answer_whole), (up_split, answer_split) = (plane.exchange(request, OK, False, False),
                                                          plane.exchange(request, OK, True, False))
    assert answer_whole == answer_split
    # the express lane keeps the names' case as the client wrote them (as nginx does); the general
    # way lowercases them: the same headers either way
    assert _names_lowered(up_whole) == up_split


def _names_lowered(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join([lines[0]] + [n.lower() + b":" + v if v else n for n, _, v in
                                        (line.partition(b":") for line in lines[1:])])


def test_the_express_lane_is_taken_for_a_plain_request(plane: Plane) -> None:
    client, _, _, _ = plane.connection()
    request = client._express(b"GET /a?b=1 HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n")
    assert request is not None and request.keep_alive and request.host == "gw" and request.query == "b=1"
    assert request.header(b"accept") == "*/*" and request.header(b"host") == "gw" and request.header(b"x") is None
    assert request._forward == b"\r\nAccept: */*"
    for special in (b"X-Forwarded-For: 1.2.3.4", b"TE: trailers", b"Connection: x-drop", b"Content-Length: 0",
                    b"Expect: 100-continue", b"Upgrade: websocket", b"Proxy-Authorization: x", b"Host: two"):
        assert client._express(b"GET / HTTP/1.1\r\nHost: gw\r\n%s\r\n\r\n" % special) is None, special
    assert client._express(b"GET / HTTP/1.1\r\n\r\n") is None  # no host: refused the general way
    assert client._express(b"CONNECT gw:443 HTTP/1.1\r\nHost: gw\r\n\r\n") is None


def test_a_malformed_head_in_one_read_is_refused_as_in_two(plane: Plane) -> None:
    for bad in (b"GET / HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: \x01\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: gw\r\n folded\r\n\r\n"):
        upstream, answer = plane.exchange(bad, OK, False, False)
        assert upstream == b"" and answer.startswith(b"HTTP/1.1 400 "), bad
        assert plane.exchange(bad, OK, True, False) == (upstream, answer)
    # the connection's express checker is usable again after a refusal
    client, _, _, _ = plane.connection()
    client.data_received(b"GET / HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n")
    assert client._express(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n") is not None


def test_headers_asked_for_are_forwarded_as_changed(plane: Plane) -> None:
    client, _, _, _ = plane.connection()
    request = client._express(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n\r\n")
    assert isinstance(request, Request)
    request.headers.append((b"x-b", b"2"))  # changed in place: the raw lines no longer go up
    assert b"\r\nX-A: 1\r\nx-b: 2\r\n" not in upstream_head(request, "n:1", None, False)
    assert b"\r\nx-a: 1\r\nx-b: 2\r\n" in upstream_head(request, "n:1", None, False)


STATUS = st.sampled_from([b"200 OK", b"201 Created", b"404 Not Found", b"299 Odd", b"503 Busy", b"200 ", b"200 A"])
RESPONSE_HEADER = st.one_of(
    st.tuples(_case(b"server"), VALUE),
    st.tuples(_case(b"x-b"), VALUE),
    st.tuples(_case(b"connection"), st.sampled_from([b"keep-alive", b"close", b"x-b", b"Keep-Alive"])),
    st.tuples(_case(b"keep-alive"), st.just(b"timeout=5")),
    st.tuples(_case(b"transfer-encoding"), st.just(b"identity")),
    st.tuples(_case(b"upgrade"), st.just(b"h2c")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), status=STATUS, headers=st.lists(RESPONSE_HEADER, max_size=5),
       body=st.binary(max_size=20), length_at=st.integers(0, 5), extra=st.sampled_from([b"", b"x", b"HTTP/1.1 200 OK\r\n"]),
       client_version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
def test_a_response_in_one_read_reaches_the_client_as_in_two(plane: Plane, version: bytes, status: bytes,
                                                             headers: list[tuple[bytes, bytes]], body: bytes,
                                                             length_at: int, extra: bytes,
                                                             client_version: bytes) -> None:
    lines = [b"%s: %s" % pair for pair in headers]
    lines.insert(min(length_at, len(lines)), b"Content-Length: %d" % len(body))
    response = b"%s %s\r\n" % (version, status) + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body + extra
    request = b"GET / %s\r\nHost: gw\r\n\r\n" % client_version
    whole = plane.exchange(request, response, False, False)
    assert whole == plane.exchange(request, response, False, True)
    if not extra and b"HTTP/1.1 200 OK" in response[:15] and len(headers) == 0:
        assert whole[1].endswith(b"\r\n\r\n" + body)


def test_a_plain_response_is_taken_whole(plane: Plane) -> None:
    client, transport, conn, _ = plane.connection()
    client.data_received(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert conn.express
    conn.data_received(OK)
    assert not conn.express and conn.sink is None and conn in plane.node.idle
    assert bytes(transport.out) == (b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 3\r\n"
                                    b"connection: keep-alive\r\n\r\nok\n")


def test_a_header_set_on_raw_lines_goes_up_as_on_a_list(plane: Plane) -> None:
    client, _, _, _ = plane.connection()
    head = b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\nX-Consumer-Username: forged\r\n\r\n"
    for name, value in ((b"x-new", "v"), (b"x-new", None), (b"x-a", "2"), (b"x-a", None),
                        (b"x-consumer-username", "alice"), (b"connection", "x"), (b"te", "trailers")):
        raw, listed = client._express(head), client._express(head)
        assert raw is not None and listed is not None
        assert listed.headers  # split into a list first: the general way
        raw.set_header(name, value)
        listed.set_header(name, value)
        assert raw.header(name) == listed.header(name) == value
        assert raw.headers == listed.headers
        assert _names_lowered(upstream_head(raw, "n:1", None, False)) == upstream_head(listed, "n:1", None, False)
    raw = client._express(head)
    assert raw is not None
    raw.set_header(b"x-new", "v")
    assert raw._forward is not None and raw.header(b"x-new") == "v"  # stayed raw


def test_an_upstream_paused_for_a_slow_client_reads_again_once_pooled(plane: Plane) -> None:
    """The body's last bytes fill the client's buffer: the upstream connection was paused for it,
    then its response ended in the same read and it went back to the pool. It must not stay paused:
    the next request on it would never see its answer (a keep-alive request after a large download
    timed out, once in a while)."""
    def run() -> None:
        client, transport, conn, upstream = plane._connection()
        client.data_received(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")  # not whole: the usual way
        client.pause_writing()  # the client stopped reading; its buffer is full
        conn.data_received(b"def")  # the rest, and the end of the response
        assert conn in plane.node.idle and conn.sink is None
        assert not upstream.paused, "a pooled upstream connection must be reading"
        client.resume_writing()
        client.data_received(b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
        conn.data_received(OK)
        assert bytes(transport.out).endswith(b"\r\n\r\nok\n") and bytes(transport.out).count(b"HTTP/1.1 200") == 2
    plane.run(run)


def test_the_fast_path_ejects_a_node_after_failures_in_a_row_only(plane: Plane) -> None:
    """The passive check (3 failing answers in a row by default) on the fast path: a good answer between
    failures starts the count again; the third failure in a row ejects the node."""
    bad = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nno\n"
    request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    node = plane.node
    for response in (bad, bad, OK, bad, bad):
        plane.exchange(request, response, False, False)
    assert node.ejected_until == 0.0 and node.fails == 2
    plane.exchange(request, bad, False, False)
    assert node.ejected_until > 0.0 and node.fails == 0
