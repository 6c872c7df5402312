"""Branch calls against scripted servers: framing, keep-alive, stale connections, TLS, bad input."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mezzo.transactions.calls import BranchCaller, Outcome, Result, classify

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # (request head + body, writer) -> keep open
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n{\"dtm_result\":\"SUCCESS\"}"


class Server:
    """Answers each request with ``reply``; records requests and how many connections it accepted."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.reply(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(reply: Reply, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(reply)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()


def answering(raw: bytes, keep: bool = True) -> Reply:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep
    return reply


@pytest.fixture
async def ok_server() -> AsyncIterator[Server]:
    async for server in serve(answering(OK)):
        yield server


SUCCESS = classify(200, b'{"dtm_result":"SUCCESS"}')


async def call(caller: BranchCaller, url: str, method: str = "POST", timeout: float = 5, **kw: object) -> Result:
    return await caller.call(method, url, params=kw.pop("params", {}), data=kw.pop("data", "{}"),  # type: ignore[arg-type]
                             timeout=timeout, headers=kw.pop("headers", {}))  # type: ignore[arg-type]


async def test_requests_reuse_one_keep_alive_connection(ok_server: Server) -> None:
    caller = BranchCaller()
    try:
        for n in range(3):
            result = await call(caller, f"{ok_server.url}/busi/out?x=1", params={"gid": f"g {n}"}, data='{"a":1}',
                                headers={"traceparent": "00-ab-cd-01"})
            assert result == SUCCESS
    finally:
        await caller.aclose()
    assert ok_server.connections == 1
    first = ok_server.requests[0]
    assert first.startswith(b"POST /busi/out?x=1&gid=g+0 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\ntraceparent: 00-ab-cd-01\r\n" in first
    assert b"\r\nContent-Type: application/json\r\n" in first and first.endswith(b"\r\n\r\n{\"a\":1}")


async def test_chunked_and_close_delimited_answers() -> None:
    chunked = (b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"dtm\r\n13\r\n_result\":\"FAILURE\"}\r\n0\r\n\r\n")
    async for server in serve(answering(chunked)):
        caller = BranchCaller()
        assert await call(caller, server.url) == classify(409, b'{"dtm_result":"FAILURE"}')
        await caller.aclose()
    until_close = b"HTTP/1.0 200 OK\r\n\r\nplain text until the end"
    async for server in serve(answering(until_close, keep=False)):
        caller = BranchCaller()
        for _ in range(2):
            assert await call(caller, server.url, method="GET") == Result(Outcome.SUCCESS)
        await caller.aclose()
        assert server.connections == 2  # not reusable


async def test_an_interim_answer_is_skipped() -> None:
    async for server in serve(answering(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)):
        caller = BranchCaller()
        for _ in range(2):
            assert await call(caller, server.url) == SUCCESS
        await caller.aclose()
        assert server.connections == 1


async def test_an_answer_cut_short_is_an_error() -> None:
    async for server in serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nnot fifty", keep=False)):
        caller = BranchCaller()
        result = await call(caller, server.url)
        await caller.aclose()
        assert result.outcome is Outcome.ERROR


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    """The server answers with keep-alive, then closes the idle connection (its keep-alive timeout)."""
    async for server in serve(answering(OK, keep=False)):
        caller = BranchCaller()
        try:
            for _ in range(3):
                assert await call(caller, server.url) == SUCCESS
                await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
        finally:
            await caller.aclose()
        assert server.connections == 3 and len(server.requests) == 3  # each request once, none lost


async def test_no_answer_in_time_is_a_timeout() -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return False

    async for server in serve(silent):
        caller = BranchCaller()
        result = await call(caller, server.url, timeout=0.2)
        await caller.aclose()
        assert result.outcome is Outcome.ERROR and "timed out after 0.2 s" in result.detail


async def test_unreachable_and_invalid_calls_are_errors_not_exceptions(ok_server: Server) -> None:
    caller = BranchCaller()
    for url, headers in [("http://127.0.0.1:1/nothing-listens", {}), ("ftp://example.com/x", {}),
                         ("http://127.0.0.1:99999/", {}), (ok_server.url, {"X-Evil": "a\r\nInjected: 1"})]:
        result = await call(caller, url, headers=headers)
        assert result.outcome is Outcome.ERROR, (url, headers)
    await caller.aclose()
    assert ok_server.requests == []  # nothing malformed went out


async def test_credentials_in_the_url_become_basic_auth(ok_server: Server) -> None:
    caller = BranchCaller()
    url = ok_server.url.replace("http://", "http://mezzo:s%40cret@") + "/p\u00e4th"
    assert await call(caller, url) == SUCCESS
    await caller.aclose()
    request = ok_server.requests[0]
    assert b"\r\nAuthorization: Basic " + base64.b64encode(b"mezzo:s@cret") + b"\r\n" in request
    assert request.startswith(b"POST /p%C3%A4th HTTP/1.1\r\n")
    assert b"mezzo" not in request.split(b"\r\n")[1]  # not in the Host header


async def test_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=cert)
    async for server in serve(answering(OK), tls=server_tls):
        url = server.url.replace("127.0.0.1", "localhost")
        caller = BranchCaller(trust)
        try:
            assert await call(caller, url) == SUCCESS and await call(caller, url) == SUCCESS
        finally:
            await caller.aclose()
        assert server.connections == 1
        untrusted = BranchCaller()
        result = await call(untrusted, url)
        await untrusted.aclose()
        assert result.outcome is Outcome.ERROR and ("SSL" in result.detail or "certificate" in result.detail)


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_branch_headers_that_cannot_go_out_are_refused_with_the_field() -> None:
    from pydantic import ValidationError

    from mezzo.transactions.model import Options

    for headers in ({"bad name": "x"}, {"X-Evil": "a\r\nInjected: 1"}, {"X-Latin": "\u20ac"}):
        with pytest.raises(ValidationError, match="branch_headers"):
            Options(branch_headers=headers)
    assert Options(branch_headers={"Authorization": "Bearer t0k\ten"}).branch_headers["Authorization"]
