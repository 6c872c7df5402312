"""A stand-in for an asyncio transport: what a protocol writes is kept in ``out``."""

from __future__ import annotations

from typing import Any


class FakeTransport:
    def __init__(self) -> None:
        self.out, self.closed = b"", False

    def write(self, chunk: bytes) -> None:
        self.out += chunk

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return None
