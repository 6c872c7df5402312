"""The Redis protocol (RESP2 and RESP3) over asyncio: request parsing, replies, pipelining.

A read may carry many commands (``redis-benchmark -P 16``): they are all parsed, executed in
order, and their replies go out in one write. A malformed frame is answered
``-ERR Protocol error: ...`` after the commands before it, and that connection is closed (as
Redis does); no input can stop the server or touch another connection.

``RequestParser`` is the one parser of client requests (the distributed-mode proxy uses it too).
Its reference path is pure Python over whole buffers (``bytes.find`` and slices, never a loop
over bytes). When hiredis is installed, a read that starts on a frame boundary and looks like
plain multibulk (no RESP3 type bytes, no nulls, no nested arrays) is split by hiredis' C reader
instead; anything else, and anything hiredis finds odd, goes down the reference path, which
decides what is valid, so both paths accept and refuse exactly the same input.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
from typing import Any

try:  # an accelerator, not a requirement: without it the reference parser does all the work
    import hiredis
except ImportError:  # pragma: no cover - a dependency; the reference path still works without it
    hiredis = None

MAX_BULK = 64 * 1024 * 1024  # one argument
MAX_ARGS = 1024 * 1024  # arguments in one command
MAX_INLINE = 64 * 1024  # an inline command, or a length line still without its CRLF
MAX_BUFFER = 1024 * 1024 * 1024  # one incomplete command (Redis' client-query-buffer-limit)
_ids = itertools.count(1)

# constant replies, encoded once
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"
EMPTY_ARRAY = b"*0\r\n"
_SMALL_INTS = tuple(b":%d\r\n" % i for i in range(256))

# A line that starts with a RESP type other than '*' or '$' (hiredis would accept it in a place
# where a request cannot have it), or an array length of six digits or more (hiredis allocates the
# whole list when it reads the length, and freeing one of 2**31 slots takes a minute); such reads
# take the reference path, which refuses the first and limits the second. (Two patterns that each
# start with a literal are searched three times faster than one with an alternation.)
_OTHER_TYPE = re.compile(rb"\n[-+:=~>_|#,(!%]")
_LONG_ARRAY = re.compile(rb"\*\d{6}")
# A read this small cannot hold an argument over MAX_BULK or a command over MAX_ARGS arguments, the
# limits hiredis does not know.
_FAST_MAX = 1024 * 1024


class ProtocolError(Exception):
    pass


class RequestParser:
    """Splits one connection's byte stream into commands (lists of bytes arguments).

    ``feed(data)`` returns the commands completed by ``data``, in order. After a protocol error
    it returns the commands that came before the bad frame and sets ``error`` (the text for the
    ``-ERR Protocol error: ...`` reply); the connection should then be closed, and the parser
    accepts nothing more.
    """

    __slots__ = ("_buf", "_need", "_partial", "_reader", "error", "max_buffer")

    def __init__(self, max_buffer: int = MAX_BUFFER, accelerate: bool = True) -> None:
        self._buf = bytearray()  # bytes of commands not complete yet
        self._need = 0  # size _buf must reach before parsing again is worth it
        self._partial: Partial | None = None  # the command being read, with its arguments so far
        self._reader = hiredis.Reader() if hiredis is not None and accelerate else None
        self.max_buffer = max_buffer
        self.error: str | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a command that is not complete yet."""
        return len(self._buf) + (self._partial.size if self._partial is not None else 0)

    def feed(self, data: bytes) -> list[list[bytes]]:
        if self.error is not None or not data:
            return []
        if (not self._buf and self._partial is None and data[0] == 0x2A and self._reader is not None
                and len(data) <= _FAST_MAX):
            commands = self._fast(data)
            if commands is not None:
                return commands
        buf = self._buf
        buf += data
        out: list[list[bytes]] = []
        try:
            if len(buf) >= self._need:  # else the argument being read is not complete: no need to look
                used, self._need, self._partial = parse_requests(bytes(buf), out, self._partial)
                del buf[:used]
            if self.pending > self.max_buffer:
                raise ProtocolError("request too big")
        except ProtocolError as exc:
            self.error = f"Protocol error: {exc}"
            buf.clear()
            self._partial = None
        return out

    def _fast(self, data: bytes) -> list[list[bytes]] | None:
        """hiredis' split of a read of whole plain multibulk commands, or None to parse it in Python."""
        if _OTHER_TYPE.search(data) is not None or _LONG_ARRAY.search(data) is not None or b"$-" in data:
            return None
        reader = self._reader
        assert reader is not None
        reader.feed(data)
        frames: list[Any] = []
        try:
            frame = reader.gets()
            while frame is not False:
                frames.append(frame)
                frame = reader.gets()
        except Exception:  # hiredis.ProtocolError, or a length it cannot allocate
            frames = []
        # Every frame a complete non-empty array, the read used up, and as many lines starting
        # with '*' as frames (so none is nested and no argument starts a line with '*'). A '*'
        # elsewhere may be an array that hiredis began after a bulk whose CRLF was other bytes
        # (taken as read, as Redis does): then the frames must account for every byte of the read.
        lines = data.count(b"\n*") + 1
        if frames and not reader.has_data() and lines == len(frames) \
                and (data.count(b"*") == lines or _encoded_size(frames) == len(data)):
            if len(frames) == 1:  # one command per read: the unpipelined client
                if type(frames[0]) is list and frames[0]:
                    return frames
            elif set(map(type, frames)) == {list} and [] not in frames:
                return frames
        self._reader = hiredis.Reader()  # whatever it holds is parsed again below
        return None


def _encoded_size(frames: list[Any]) -> int:
    """Bytes that plain multibulk frames take on the wire: ``*N\\r\\n``, then ``$L\\r\\n<arg>\\r\\n`` each."""
    if not all(type(frame) is list for frame in frames):
        return -1
    return sum(len(str(len(frame))) + 3 + sum(len(str(len(arg))) + len(arg) + 5 for arg in frame)
               for frame in frames)


def _length(field: bytes, error: str) -> int:
    """A length as Redis reads one (string2ll): digits with an optional '-', no sign, space,
    underscore or leading zero (which Python's int() would all take), at most 19 digits (64 bits)."""
    digits = field[1:] if field[:1] == b"-" else field
    if not digits.isdigit() or len(digits) > 19 or (digits[0] == 0x30 and (len(digits) > 1 or field[:1] == b"-")):
        raise ProtocolError(error)
    return int(field)


class Partial:
    """A multibulk command whose arguments are still arriving."""

    __slots__ = ("args", "left", "size")

    def __init__(self, left: int) -> None:
        self.args: list[bytes] = []
        self.left = left  # arguments still to come
        self.size = 0  # bytes of the arguments so far


def parse_requests(buf: bytes, out: list[list[bytes]], partial: Partial | None = None) -> tuple[int, int, Partial | None]:
    """Append the complete commands in ``buf`` to ``out``, finishing ``partial`` (a command begun
    in earlier bytes) first.

    Returns (bytes used, bytes needed, partial). The bytes used include the head and the whole
    arguments of a command that is not complete yet, which ``partial`` then holds, so no byte is
    parsed twice however a long command is cut. Bytes needed is the size ``buf[used:]`` must
    reach for the argument being read to be complete when its length is known, else 0. Raises
    ProtocolError for a malformed frame, after appending the commands before it.
    """
    pos, n, find = 0, len(buf), buf.find
    while True:
        if partial is None:
            if pos >= n:
                return pos, 0, None
            if buf[pos] != 0x2A:  # not '*': an inline command (telnet, a first PING from some tools)
                end = find(b"\n", pos)
                if end < 0:
                    if n - pos > MAX_INLINE:
                        raise ProtocolError("too big inline request")
                    return pos, 0, None
                words = buf[pos:end].rstrip(b"\r").split()
                pos = end + 1
                if words:
                    out.append(words)
                continue
            end = find(b"\r\n", pos)
            if end < 0:
                if n - pos > MAX_INLINE:
                    raise ProtocolError("too big mbulk count string")
                return pos, 0, None
            count = _length(buf[pos + 1:end], "invalid multibulk length")
            if count > MAX_ARGS:
                raise ProtocolError("invalid multibulk length")
            pos = end + 2
            if count <= 0:  # '*0' and '*-1' are skipped, as Redis does
                continue
            partial = Partial(count)
        args, left, held = partial.args, partial.left, partial.size
        while left:
            if pos >= n:
                break
            if buf[pos] != 0x24:  # '$'
                raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
            end = find(b"\r\n", pos)
            if end < 0:
                if n - pos > MAX_INLINE:
                    raise ProtocolError("too big bulk count string")
                break
            size = _length(buf[pos + 1:end], "invalid bulk length")
            if size < 0 or size > MAX_BULK:
                raise ProtocolError("invalid bulk length")
            start = end + 2
            stop = start + size + 2
            if stop > n:
                partial.left, partial.size = left, held
                return pos, stop - pos, partial
            args.append(buf[start:start + size])
            left -= 1
            held += size
            pos = stop
        if left:
            partial.left, partial.size = left, held
            return pos, 0, partial
        out.append(args)
        partial = None


class Reply:
    """Encoders for both protocol versions; ``resp3`` picks maps, nulls and doubles."""

    __slots__ = ("resp3",)

    def __init__(self) -> None:
        self.resp3 = False

    @staticmethod
    def ok() -> bytes:
        return OK

    @staticmethod
    def simple(text: str) -> bytes:
        return b"+%s\r\n" % text.encode()

    @staticmethod
    def error(text: str) -> bytes:
        text = text if text.split(" ", 1)[0].isupper() else "ERR " + text
        return b"-%s\r\n" % text.replace("\r", " ").replace("\n", " ").encode()

    @staticmethod
    def integer(value: int) -> bytes:
        if 0 <= value < 256:
            return _SMALL_INTS[value]
        return b":%d\r\n" % value

    def null(self) -> bytes:
        return NULL3 if self.resp3 else NULL2

    def bulk(self, value: bytes | None) -> bytes:
        if value is None:
            return NULL3 if self.resp3 else NULL2
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def array(self, items: list[bytes | None]) -> bytes:
        return b"*%d\r\n" % len(items) + b"".join([self.bulk(i) for i in items])

    def raw_array(self, encoded: list[bytes]) -> bytes:
        return b"*%d\r\n" % len(encoded) + b"".join(encoded)

    def map(self, pairs: list[tuple[bytes, bytes]]) -> bytes:
        head = b"%%%d\r\n" % len(pairs) if self.resp3 else b"*%d\r\n" % (2 * len(pairs))
        return head + b"".join([self.bulk(k) + self.bulk(v) for k, v in pairs])

    def double(self, value: float) -> bytes:
        text = repr(value).encode() if value != int(value) or abs(value) >= 1e17 else b"%d" % int(value)
        return b",%s\r\n" % text if self.resp3 else self.bulk(text)


class Session(Reply):
    """Per-connection state the commands see."""

    __slots__ = ("authed", "closing", "db", "id", "name", "namespace", "peer", "principal")

    def __init__(self, authed: bool, peer: str) -> None:
        super().__init__()
        self.id = next(_ids)
        self.name: bytes | None = None
        self.db = 0
        self.namespace = "default"  # the keyspace of ``db`` (see ``CacheServer.select``)
        self.authed = authed
        self.principal: Any = None
        self.closing = False
        self.peer = peer


class RespConnection(asyncio.Protocol):
    """One client connection: parse what arrives, run it, answer in one write."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.parser = RequestParser()
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
        parser, session, transport = self.parser, self.session, self.transport
        assert session is not None and transport is not None
        if session.closing:
            return
        commands = parser.feed(data)
        if commands:
            transport.write(self.server.execute_all(session, commands))
        if parser.error is not None and not session.closing:
            transport.write(Reply.error(parser.error))
            session.closing = True
        if session.closing:
            transport.close()
