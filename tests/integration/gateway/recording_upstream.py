"""An upstream that records each request head as the gateway sent it, header by header (the echo
servers of ``conftest`` fold repeated headers into one), and answers a fixed response.

``recording``: ``await recording(extra_headers=b"")`` gives a started ``RecordingUpstream``
(``.port``, ``.heads``: one ``Head`` per request); ``extra_headers`` are raw lines added to its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest


@dataclass
class Head:
    request_line: str
    headers: list[tuple[str, str]]  # (lowercase name, value), in order, repeats kept

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


class RecordingUpstream:
    def __init__(self, extra_headers: bytes = b"") -> None:
        self.extra_headers = extra_headers
        self.heads: list[Head] = []
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")[:-2]
                headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
                head = Head(lines[0], headers)
                self.heads.append(head)
                length = int(next(iter(head.all("content-length")), "0"))
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n" + self.extra_headers
                             + b"content-length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()
        self.writers.discard(writer)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):  # the gateway's pooled connections
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


@pytest.fixture
async def recording() -> AsyncIterator[Callable[..., Awaitable[RecordingUpstream]]]:
    made: list[RecordingUpstream] = []

    async def make(extra_headers: bytes = b"") -> RecordingUpstream:
        upstream = RecordingUpstream(extra_headers)
        await upstream.start()
        made.append(upstream)
        return upstream

    try:
        yield make
    finally:
        for upstream in made:
            await upstream.stop()
