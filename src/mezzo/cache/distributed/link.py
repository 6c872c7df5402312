"""The data path to one Redis node: one multiplexed connection, requests pipelined, replies in order.

As twemproxy does, every proxied call to a node goes down one TCP connection: a batch is packed
into one write, and replies are matched to callers first-in first-out as hiredis parses them.
Error replies come back as values (``hiredis.ReplyError``), not failures. A timeout or a broken
connection fails every call in flight (the stream can no longer be matched to callers) and the
next call reconnects. Control work (SCAN, DUMP/RESTORE, probes) uses redis-py's clients instead.
A ``rediss://`` node's connection is asyncio's TLS transport, with the address's ``NodeTLS`` context;
its AUTH password is read at each connect (``password_env``), never kept here.
memcached nodes use the same link with another reader and encoder (memcached.py's ``MetaLink``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis

from mezzo.cache.distributed.backend import NodeAddress, NodeSettingError


class LinkError(ConnectionError):
    """The connection to a node broke or timed out."""


def pack(args: Sequence[bytes | str | int]) -> bytes:
    """One command in RESP (hiredis' C encoder)."""
    return hiredis.pack_command(args if isinstance(args, tuple) else tuple(args))  # type: ignore[no-any-return]


def _link_error(exc: BaseException) -> LinkError:
    """What a failed connect reports (in the node's status too): said plainly for settings and TLS."""
    if isinstance(exc, LinkError):
        return exc
    if isinstance(exc, NodeSettingError):
        return LinkError(str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return LinkError(f"TLS certificate verification failed: {exc.verify_message or exc}")
    return LinkError(f"cannot connect: {exc!r}")


class _Batch:
    """Commands written together; their replies fill ``replies``, then ``done`` resolves."""

    __slots__ = ("done", "replies", "size", "started")

    def __init__(self, done: asyncio.Future[list[Any]], size: int, started: float) -> None:
        self.done = done
        self.size = size
        self.started = started
        self.replies: list[Any] = []


class _Stream(asyncio.Protocol):
    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.reader = link.new_reader()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.link.waiting
        try:
            reply = self.reader.gets()
            while reply is not False:
                batch = waiting[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.size:
                    waiting.popleft()
                    if not batch.done.done():
                        batch.done.set_result(batch.replies)
                reply = self.reader.gets()
        except Exception as exc:  # a reply we cannot parse, or more replies than requests
            self.link.broken(self, LinkError(f"bad reply stream: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # may come before _connect resumes: it must not adopt a dead stream
        self.link.broken(self, LinkError(f"connection lost: {exc or 'closed by the node'}"))


class NodeLink:
    def __init__(self, address: NodeAddress, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.waiting: deque[_Batch] = deque()
        self._stream: _Stream | None = None
        self._connecting: asyncio.Future[_Stream] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # packed commands not written yet
        self._flush_due = False
        self.last_break: LinkError | None = None

    async def _connect(self) -> _Stream:
        if self._stream is not None:
            return self._stream
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            setup = self.setup()  # before connecting: a password variable that is unset opens nothing
            tls = self.address.tls.context() if self.address.tls is not None else None
            _, stream = await asyncio.wait_for(
                loop.create_connection(lambda: _Stream(self), self.address.host, self.address.port, ssl=tls,
                                       server_hostname=self.address.host if tls is not None else None),
                self.timeout)
            if stream.lost:
                raise LinkError("connection lost: closed by the node at once")
            self._stream = stream
            if setup:
                for reply in await self._send(stream, setup):
                    if isinstance(reply, hiredis.ReplyError):
                        raise LinkError(f"node refused the connection setup: {reply}")
            self._connecting.set_result(stream)
            return stream
        except BaseException as exc:
            failure = _link_error(exc)
            if self._stream is not None:
                self.broken(self._stream, failure)
            self._connecting.set_exception(failure)
            self._connecting.exception()  # retrieved: the waiters got it through shield
            raise failure from exc
        finally:
            self._connecting = None

    def new_reader(self) -> Any:
        """The parser of this node's replies: ``feed(bytes)``, then ``gets()`` until it answers False."""
        return hiredis.Reader()

    def encode(self, commands: list[Any]) -> list[bytes]:
        return [pack(c) for c in commands]

    def setup(self) -> list[tuple[Any, ...]]:
        """Commands that open every new connection (AUTH, SELECT)."""
        setup: list[tuple[Any, ...]] = []
        password = self.address.auth_password()
        if password is not None:
            setup.append(("AUTH", self.address.username, password) if self.address.username else ("AUTH", password))
        if self.address.db:
            setup.append(("SELECT", self.address.db))
        return setup

    def _send(self, stream: _Stream, commands: list[Any]) -> asyncio.Future[list[Any]]:
        if stream is not self._stream:  # broke since the caller got it: its replies would go to others
            raise self.last_break or LinkError("connection lost before the call was sent")
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), len(commands), loop.time())
        self.waiting.append(batch)
        self._out.extend(self.encode(commands))
        if not self._flush_due:  # calls of every client in this loop iteration go out in one write
            self._flush_due = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check)
        return batch.done

    def _flush(self) -> None:
        self._flush_due = False
        out, self._out = self._out, []
        stream = self._stream  # what _out holds was queued on the current stream: broken() empties it
        if out and stream is not None and stream.transport is not None:
            stream.transport.write(b"".join(out))

    def _check(self) -> None:
        """One timer per link instead of one per call: the oldest batch must have its replies by now."""
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        late = loop.time() - self.waiting[0].started
        if late >= self.timeout:
            failure = LinkError(f"no reply within {self.timeout:g} s")
            if self._stream is not None:
                self.broken(self._stream, failure)
            else:  # no stream can answer these any more: never leave a caller waiting
                self._fail_waiting(failure)
        else:
            self._watchdog = loop.call_later(max(self.timeout - late, 0.001), self._check)

    async def call(self, commands: list[Any]) -> list[Any]:
        """Replies of ``commands`` in order; raises LinkError when the node did not answer in time."""
        stream = self._stream or await self._connect()
        return await self._send(stream, commands)

    def broken(self, stream: _Stream, exc: Exception) -> None:
        """Fail everything in flight on ``stream`` and forget it; the next call reconnects."""
        if stream is not self._stream:
            return
        self._stream = None
        self._out = []
        if isinstance(exc, LinkError):
            self.last_break = exc  # what the calls that still held this stream fail with too
        self._fail_waiting(exc)
        if stream.transport is not None:
            stream.transport.abort()

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self.waiting = self.waiting, deque()
        for batch in waiting:
            if not batch.done.done():
                batch.done.set_exception(exc)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._stream is not None:
            self.broken(self._stream, LinkError("closed"))
        with contextlib.suppress(Exception):
            if self._connecting is not None:
                self._connecting.cancel()
