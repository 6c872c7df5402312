"""HTTP/1.1 pieces the data plane shares: the request as parsed, replies the gateway makes itself,
and the header rules of a proxy (hop-by-hop headers, X-Forwarded-*)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate"})
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Request:
    """One request as the client sent it; plugins may rewrite ``path``, ``query`` and ``headers``."""

    __slots__ = (
        "_args",
        "_cookies",
        "body",
        "chunked",
        "client_ip",
        "content_length",
        "headers",
        "host",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "upgrade",
    )

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], client_ip: str,
                 http_version: str, keep_alive: bool) -> None:
        raw_path, _, query = target.partition(b"?")
        self.method = method
        self.path = unquote(raw_path.decode("latin-1")) if b"%" in raw_path else raw_path.decode("latin-1")
        self.query = query.decode("latin-1")
        self.headers = headers  # (lowercase name, value), in order
        self.client_ip = client_ip
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.body: bytes | None = None  # the whole body when buffered
        self.upgrade = False
        self.content_length: int | None = None
        self.chunked = False
        self.host = ""
        self._args: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def set_header(self, name: bytes, value: str | None) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name]
        if value is not None:
            self.headers.append((name, value.encode("latin-1")))

    @property
    def args(self) -> dict[str, str]:
        if self._args is None:
            self._args = dict(parse_qsl(self.query, keep_blank_values=True))
        return self._args

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            jar: dict[str, str] = {}
            for name, value in self.headers:
                if name == b"cookie":
                    for part in value.decode("latin-1").split(";"):
                        key, sep, val = part.strip().partition("=")
                        if sep:
                            jar.setdefault(key, val)
            self._cookies = jar
        return self._cookies

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


class Reply:
    """A response the gateway makes itself (an error, a plugin's answer, a mock)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes | str | Any = b"", headers: dict[str, str] | None = None,
                 content_type: str | None = None) -> None:
        self.status = status
        self.headers = dict(headers or {})
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes | bytearray):
            body = orjson.dumps(body)
            content_type = content_type or "application/json"
        if content_type:
            self.headers.setdefault("content-type", content_type)
        self.body = bytes(body)

    def encode(self, keep_alive: bool, extra: list[tuple[bytes, bytes]] | None = None, head: bool = False) -> bytes:
        lines = [b"HTTP/1.1 %d %s" % (self.status, REASONS.get(self.status, b"Unknown"))]
        for name, value in self.headers.items():
            lines.append(b"%s: %s" % (name.encode("latin-1"), str(value).encode("latin-1")))
        for name, value in extra or ():
            lines.append(b"%s: %s" % (name, value))
        lines.append(b"content-length: %d" % len(self.body))
        if not keep_alive:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else self.body)


def problem(status: int, detail: str, **extra: Any) -> Reply:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail, **extra}
    return Reply(status, orjson.dumps(body), content_type="application/problem+json")


def upstream_head(request: Request, host: str, body_length: int | None, chunked: bool,
                  extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """The request head sent upstream: hop-by-hop headers dropped, X-Forwarded-* added, framing set."""
    parts = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (request.method.encode(), request.target.encode("latin-1"),
                                                 host.encode("latin-1"))]
    forwarded_for = None
    connection_tokens: set[bytes] = set()
    for name, value in request.headers:
        if name == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
    for name, value in request.headers:
        if name in HOP_BY_HOP or name == b"host" or name == b"content-length" or name in connection_tokens:
            continue
        if name == b"x-forwarded-for":
            forwarded_for = value
            continue
        parts.append(b"%s: %s\r\n" % (name, value))
    ip = request.client_ip.encode()
    parts.append(b"x-forwarded-for: %s\r\n" % (forwarded_for + b", " + ip if forwarded_for else ip))
    parts.append(b"x-real-ip: %s\r\n" % ip)
    parts.append(b"x-forwarded-proto: http\r\n")
    if request.host:
        parts.append(b"x-forwarded-host: %s\r\n" % request.host.encode("latin-1"))
    for name, value in extra or ():
        parts.append(b"%s: %s\r\n" % (name, value))
    if request.upgrade:
        parts.append(b"connection: upgrade\r\nupgrade: %s\r\n" % (request.header(b"upgrade") or "websocket").encode())
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif body_length is not None and (body_length or request.method in ("POST", "PUT", "PATCH")):
        parts.append(b"content-length: %d\r\n" % body_length)
    parts.append(b"\r\n")
    return b"".join(parts)
