"""The Redis protocol (RESP2 and RESP3) over asyncio: parsing, replies, pipelining.

Every complete command in a read is executed and the replies go out in one write, so pipelined
clients (``redis-benchmark -P 16``) cost one syscall per batch. A protocol error is answered
``-ERR Protocol error`` and that connection is closed (as Redis does); no input can stop the
server or touch another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Callable
from typing import Any

MAX_BULK = 64 * 1024 * 1024
MAX_ARGS = 1024 * 1024
MAX_INLINE = 64 * 1024
_ids = itertools.count(1)


class ProtocolError(Exception):
    pass


class Reply:
    """Encoders for both protocol versions; ``resp3`` picks maps, nulls and doubles."""

    __slots__ = ("resp3",)

    def __init__(self) -> None:
        self.resp3 = False

    @staticmethod
    def ok() -> bytes:
        return b"+OK\r\n"

    @staticmethod
    def simple(text: str) -> bytes:
        return b"+%s\r\n" % text.encode()

    @staticmethod
    def error(text: str) -> bytes:
        text = text if text.split(" ", 1)[0].isupper() else "ERR " + text
        return b"-%s\r\n" % text.replace("\r", " ").replace("\n", " ").encode()

    @staticmethod
    def integer(value: int) -> bytes:
        return b":%d\r\n" % value

    def null(self) -> bytes:
        return b"_\r\n" if self.resp3 else b"$-1\r\n"

    def bulk(self, value: bytes | None) -> bytes:
        if value is None:
            return self.null()
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def array(self, items: list[bytes | None]) -> bytes:
        return b"*%d\r\n" % len(items) + b"".join(self.bulk(i) for i in items)

    def raw_array(self, encoded: list[bytes]) -> bytes:
        return b"*%d\r\n" % len(encoded) + b"".join(encoded)

    def map(self, pairs: list[tuple[bytes, bytes]]) -> bytes:
        if self.resp3:
            return b"%%%d\r\n" % len(pairs) + b"".join(self.bulk(k) + self.bulk(v) for k, v in pairs)
        return b"*%d\r\n" % (2 * len(pairs)) + b"".join(self.bulk(k) + self.bulk(v) for k, v in pairs)

    def double(self, value: float) -> bytes:
        text = repr(value).encode() if value != int(value) or abs(value) >= 1e17 else b"%d" % int(value)
        return b",%s\r\n" % text if self.resp3 else self.bulk(text)


class Session(Reply):
    """Per-connection state the commands see."""

    __slots__ = ("authed", "closing", "db", "id", "name", "peer", "principal")

    def __init__(self, authed: bool, peer: str) -> None:
        super().__init__()
        self.id = next(_ids)
        self.name: bytes | None = None
        self.db = 0
        self.authed = authed
        self.principal: Any = None
        self.closing = False
        self.peer = peer


Handler = Callable[[Session, list[bytes]], bytes]


class RespConnection(asyncio.Protocol):
    def __init__(self, server: Any) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.session = Session(not self.server.require_auth, f"{peer[0]}:{peer[1]}" if peer else "")
        self.server.clients[self.session.id] = self

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.server.clients.pop(self.session.id, None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        session = self.session
        assert session is not None and self.transport is not None
        try:
            while self.buffer:
                parsed = self._parse()
                if parsed is None:
                    break
                if not parsed:
                    continue
                out.append(self.server.execute(session, parsed))
                if session.closing:
                    break
        except ProtocolError as exc:
            out.append(Reply.error(f"Protocol error: {exc}"))
            session.closing = True
        if out:
            self.transport.write(b"".join(out))
        if session.closing:
            self.transport.close()

    def _parse(self) -> list[bytes] | None:
        """One command from the buffer, or None when it is not complete yet."""
        buf = self.buffer
        if buf[0] != 0x2A:  # not '*': an inline command (telnet, redis-cli's first ping)
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_INLINE:
                    raise ProtocolError("too big inline request")
                return None
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[:end + 1]
            return line.split()
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        try:
            count = int(buf[1:end])
        except ValueError:
            raise ProtocolError("invalid multibulk length") from None
        if count > MAX_ARGS:
            raise ProtocolError("invalid multibulk length")
        pos = end + 2
        args: list[bytes] = []
        for _ in range(max(count, 0)):
            if pos >= len(buf):
                return None
            if buf[pos] != 0x24:  # '$'
                raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            try:
                size = int(buf[pos + 1:end])
            except ValueError:
                raise ProtocolError("invalid bulk length") from None
            if size < 0 or size > MAX_BULK:
                raise ProtocolError("invalid bulk length")
            start = end + 2
            if start + size + 2 > len(buf):
                return None
            args.append(bytes(buf[start:start + size]))
            pos = start + size + 2
        del buf[:pos]
        return args
