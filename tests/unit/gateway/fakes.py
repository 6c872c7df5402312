"""Stand-ins for driving the data plane by hand, without sockets."""

from __future__ import annotations

from typing import Any

OK = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"


class Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.out += part

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0
