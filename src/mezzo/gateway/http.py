"""HTTP/1.1 pieces the data plane shares: the request as parsed, replies the gateway makes itself,
and the header rules of a proxy (hop-by-hop headers, X-Forwarded-*)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_plus

import orjson

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate"})
# what the proxy sets itself on the way upstream; the client's values are dropped
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-real-ip",
                              b"x-forwarded-proto", b"x-forwarded-host"}
PATH_SAFE = "/:@!$&'()*+,;=-._~"
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class NoCallbacks:
    """The protocol of an httptools parser that only checks syntax (llhttp calls nothing in Python)."""

    __slots__ = ()


class Request:
    """One request as the client sent it; plugins may rewrite ``path``, ``query`` and ``headers``."""

    __slots__ = (
        "_args",
        "_cookies",
        "_decoded",
        "_forward",
        "_headers",
        "_lower",
        "_query",
        "_raw",
        "body",
        "chunked",
        "client_ip",
        "content_length",
        "forwarded",
        "host",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "raw_path",
        "raw_target",
        "scheme",
        "upgrade",
    )

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]] | None, client_ip: str,
                 http_version: str, keep_alive: bool, lines: bytes | None = None, forward: bytes | None = None,
                 host: str = "", scheme: str = "http", forwarded: bytes | None = None,
                 body: bytes | None = None) -> None:
        # (``_args``, ``_cookies`` and ``_lower`` are left unset until first asked for)
        self.method = method
        self.raw_target: bytes | None = target  # forwarded as is while path and query are unchanged
        mark = target.find(b"?")
        if mark < 0:
            path = target.decode("latin-1")
            self.query = self._query = ""
        else:
            path = target[:mark].decode("latin-1")
            self.query = self._query = target[mark + 1:].decode("latin-1")
        self.raw_path = path  # as sent: forwarded unchanged unless a plugin rewrites the path
        if "%" in path:
            path = unquote(path)
        if ("/." in path or "//" in path) and path.startswith("/"):
            # "/a/../b" and "//b" must not miss a route for "/b/*": match and forward "/b"
            normal = remove_dot_segments(path)
            if normal != path:
                path = normal
                self.raw_path = quote(normal, safe=PATH_SAFE)
                self.raw_target = None
        self.path = self._decoded = path
        self.scheme = scheme
        self.forwarded = forwarded  # the client connection's X-Forwarded-* lines, made once
        # the headers as (lowercase name, value) pairs in order, or, from the client's express lane
        # (see ClientConnection._express), the raw header lines they are made of when first asked for
        self._headers = headers
        self._raw = lines  # "\r\nName: value" lines, then "\r\n"; llhttp has checked them
        self._forward = forward  # _raw's lines minus host and connection: sent upstream as they are
        self.client_ip = client_ip
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.body = body  # the whole body when buffered
        self.upgrade = False
        self.content_length: int | None = None
        self.chunked = False
        self.host = host
        self._lower: bytes | None = None  # the raw lines in lowercase, made when header() first looks

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = self._headers
        if headers is None:
            # the list may be changed in place by whoever asked: the raw lines are not forwarded any more
            headers = self._headers = split_lines(self._raw or b"")
            self._forward = None
        return headers

    @headers.setter
    def headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers = headers
        self._forward = None

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lowercase), as the client sent it."""
        if self._headers is None:
            raw = self._raw or b"\r\n"
            lower = self._lower
            if lower is None:
                lower = self._lower = raw.lower()
            at = lower.find(b"\r\n" + name + b":")
            if at < 0:
                return None
            start = at + len(name) + 3
            return raw[start:raw.find(b"\r\n", start)].lstrip(b" \t").decode("latin-1")
        for key, value in self._headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def set_header(self, name: bytes, value: str | None) -> None:
        if self._forward is not None and self._headers is None and name not in NOT_FORWARDED:
            raw = self._raw or b"\r\n"
            lower = self._lower
            if lower is None:
                lower = self._lower = raw.lower()
            if lower.find(b"\r\n" + name + b":") < 0:  # a new header on raw lines: added to them
                if value is not None:
                    line = b"%s: %s" % (name, value.encode("latin-1"))
                    self._raw = raw + line + b"\r\n"
                    self._forward += b"\r\n" + line
                    self._lower = None
                return
        self.headers = [(k, v) for k, v in self.headers if k != name]  # the setter: no raw forwarding
        if value is not None:
            self.headers.append((name, value.encode("latin-1")))

    @property
    def args(self) -> dict[str, str]:
        args = getattr(self, "_args", None)  # unset, or None after a plugin changed the query
        if args is None:
            args = self._args = dict(parse_qsl(self.query, keep_blank_values=True))
        return args

    @property
    def cookies(self) -> dict[str, str]:
        jar: dict[str, str] | None = getattr(self, "_cookies", None)
        if jar is None:
            jar = {}
            for name, value in self.headers:
                if name == b"cookie":
                    for part in value.decode("latin-1").split(";"):
                        key, sep, val = part.strip().partition("=")
                        if sep:
                            jar.setdefault(key, val)
            self._cookies = jar
        return jar

    @property
    def target(self) -> str:
        """The request target sent upstream: the client's own bytes unless ``path`` was changed."""
        path = self.raw_path if self.path is self._decoded or self.path == self._decoded \
            else quote(self.path, safe=PATH_SAFE)
        return f"{path}?{self.query}" if self.query else path


def split_lines(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(lowercase name, value) pairs of raw header lines ("\r\nName: value" each), valued as llhttp
    gives them: leading whitespace dropped, trailing kept."""
    pairs = []
    for line in raw.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name.lower(), value.lstrip(b" \t")))
    return pairs


def drop_argument(query: str, name: str) -> str:
    """``query`` without argument ``name``, however its name is encoded (``api%6Bey`` is ``apikey``)."""
    return "&".join(p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != name)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, for absolute paths: "/a/./b/../c" is "/a/c"; never above the root; "//" is "/"."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment == "..":
            if out:
                out.pop()
        elif segment == "" and i < len(segments) - 1:
            continue  # "//" is "/" (as nginx's merge_slashes)
        elif segment != ".":
            out.append(segment)
    trailing = segments[-1] in (".", "..") if segments else False
    return "/" + "/".join(out) + ("/" if trailing and out else "")


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
        """The response bytes; ``head`` for a HEAD request (headers only, the length of the body)."""
        lines = [b"HTTP/1.1 %d %s" % (self.status, REASONS.get(self.status, b"Unknown"))]
        for name, value in self.headers.items():
            lines.append(b"%s: %s" % (name.encode("latin-1"), str(value).encode("latin-1")))
        for raw_name, raw_value in extra or ():
            lines.append(b"%s: %s" % (raw_name, raw_value))
        bodyless = self.status in (204, 304) or self.status < 200
        if not bodyless:
            lines.append(b"content-length: %d" % len(self.body))
        if not keep_alive:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head or bodyless else self.body)


def problem(status: int, detail: str, **extra: Any) -> Reply:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail, **extra}
    return Reply(status, orjson.dumps(body), content_type="application/problem+json")


def forwarded_lines(client_ip: str, scheme: str, forwarded_for: bytes | None = None) -> bytes:
    ip = client_ip.encode()
    return b"x-forwarded-for: %s\r\nx-real-ip: %s\r\nx-forwarded-proto: %s\r\n" % (
        forwarded_for + b", " + ip if forwarded_for else ip, ip, scheme.encode())


def upstream_head(request: Request, host: str, body_length: int | None, chunked: bool,
                  extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """The request head sent upstream: hop-by-hop headers dropped, X-Forwarded-* added, framing set."""
    target = request.raw_target
    if target is None or request.path is not request._decoded or request.query is not request._query:
        target = request.target.encode("latin-1")
    forward = request._forward
    if forward is not None and not extra and not chunked and request.forwarded is not None:
        # the express lane's request (no hop-by-hop or X-Forwarded-* header, no upgrade, headers
        # untouched): its own lines go up as they came; the same bytes as the general way below
        return b"%s %s HTTP/1.1\r\nhost: %s%s\r\n%s%s%s\r\n" % (
            request.method.encode(), target, host.encode("latin-1"), forward, request.forwarded,
            b"x-forwarded-host: %s\r\n" % request.host.encode("latin-1") if request.host else b"",
            b"content-length: %d\r\n" % body_length
            if body_length is not None and (body_length or request.method in ("POST", "PUT", "PATCH")) else b"")
    parts = [request.method.encode(), b" ", target, b" HTTP/1.1\r\nhost: ", host.encode("latin-1"), b"\r\n"]
    forwarded_for = None
    connection_tokens: list[bytes] | None = None
    for name, value in request.headers:
        if name in NOT_FORWARDED:
            if name == b"x-forwarded-for":
                forwarded_for = value
            elif name == b"connection":
                connection_tokens = [t.strip().lower() for t in value.split(b",")]
            continue
        parts += (name, b": ", value, b"\r\n")
    if connection_tokens:  # headers the client named in Connection are hop-by-hop too
        drop = {t for t in connection_tokens if t not in (b"close", b"keep-alive", b"upgrade")}
        if drop:
            kept = parts[:6]
            for i in range(6, len(parts), 4):
                if parts[i] not in drop:
                    kept += parts[i:i + 4]
            parts = kept
    if forwarded_for is None and request.forwarded is not None:
        parts.append(request.forwarded)
    else:
        parts.append(forwarded_lines(request.client_ip, request.scheme, forwarded_for))
    if request.host:
        parts += (b"x-forwarded-host: ", request.host.encode("latin-1"), b"\r\n")
    for name, value in extra or ():
        parts += (name, b": ", value, b"\r\n")
    if request.upgrade:
        parts.append(b"connection: upgrade\r\nupgrade: %s\r\n" % (request.header(b"upgrade") or "websocket").encode())
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif body_length is not None and (body_length or request.method in ("POST", "PUT", "PATCH")):
        parts.append(b"content-length: %d\r\n" % body_length)
    parts.append(b"\r\n")
    return b"".join(parts)
