"""proxy-cache: keep GET responses in memory and answer repeats from there, per route.

The key is the method (HEAD is answered from GET's entry) and ``cacheKey`` (``$host``,
``$request_uri`` by default). A response is stored when its status is in ``cacheHttpStatus``,
it has no ``Set-Cookie``, ``Vary: *`` or ``noCache`` variable set, its body is at most
``maxEntrySize``, and (with ``cacheControl``, the default) the upstream's ``Cache-Control`` allows
it: ``no-store``, ``private`` and ``no-cache`` prevent it, ``s-maxage``/``max-age`` (else
``Expires``) give its lifetime, else ``cacheTtl``. A response to a request with
``Authorization`` is stored only if marked ``public`` or ``s-maxage``. ``Vary`` is honoured:
each set of the named request headers gets its own entry. Every answer says ``X-Cache-Status``:
``HIT``, ``MISS``, ``EXPIRED`` (there was an entry, too old) or ``BYPASS`` (a ``cacheBypass``
variable is set: the upstream is asked, its answer still stored). Entries live in this process,
least recently used dropped first beyond ``maxSize`` bytes.

A hit is answered in the access phase, so plugins that run after this one (limits below its
priority, the upstream's header filters) do not run for it; what the header filters had done to
the stored response is part of it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.vars import check, getter
from mezzo.resources.types import ByteSize, Duration

clock = time.monotonic  # tests replace it
STATE = "proxy_cache"
# not stored: hop-by-hop and framing (the cache sets its own), and what belongs to one answer only
NOT_STORED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"trailer",
                        b"upgrade", b"proxy-connection", b"set-cookie", b"x-cache-status", b"age", b"date"})
CACHE_HEADERS = frozenset({b"cache-control", b"expires", b"pragma", b"last-modified", b"etag"})


class ProxyCacheConfig(Config):
    cache_key: list[str] = Field(default_factory=lambda: ["$host", "$request_uri"], min_length=1)
    cache_method: list[Literal["GET", "HEAD"]] = Field(default_factory=lambda: ["GET", "HEAD"], min_length=1)
    cache_http_status: list[int] = Field(default_factory=lambda: [200, 301, 404], min_length=1)
    cache_bypass: list[str] = Field(default_factory=list, description="variables: any set (not 0) skips the lookup")
    no_cache: list[str] = Field(default_factory=list, description="variables: any set (not 0) skips the store")
    cache_ttl: Duration = Field(300.0, gt=0, description="lifetime when the upstream gives none")
    cache_control: bool = Field(True, description="honour the upstream's Cache-Control and Expires")
    hide_cache_headers: bool = Field(False, description="do not send Cache-Control, Expires, ... to clients")
    max_size: ByteSize = Field(64 * 1024 * 1024, gt=0, description="bytes of bodies and headers kept")
    max_entry_size: ByteSize = Field(1024 * 1024, gt=0, description="larger responses are not stored")

    _vars = field_validator("cache_key", "cache_bypass", "no_cache")(classmethod(lambda cls, v: check(v)))


class Entry:
    __slots__ = ("body", "expires", "headers", "size", "status", "stored")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, expires: float, now: float) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.expires, self.stored = expires, now
        self.size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 100


class Store:
    """Entries by key in LRU order, at most ``max_size`` bytes; and the Vary names each key was stored with."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.vary: OrderedDict[str, tuple[bytes, ...]] = OrderedDict()

    def variant(self, key: str, request: Any) -> str:
        names = self.vary.get(key)
        if not names:
            return key
        return key + "\x00" + "\x00".join(request.header(n) or "" for n in names)

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: str, names: tuple[bytes, ...], request: Any, entry: Entry) -> None:
        self.vary[key] = names
        self.vary.move_to_end(key)
        full = self.variant(key, request)
        self.drop(full)
        self.entries[full] = entry
        self.size += entry.size
        while self.size > self.max_size and self.entries:
            _, old = self.entries.popitem(last=False)
            self.size -= old.size
        while len(self.vary) > max(1024, 2 * len(self.entries)):
            self.vary.popitem(last=False)

    def drop(self, key: str) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= old.size


class _Pending:
    """One request's way through the cache: its key and label, then the response being captured."""

    __slots__ = ("capture", "headers", "key", "label", "size", "ttl")

    def __init__(self, key: str, label: bytes) -> None:
        self.key, self.label = key, label
        self.capture: list[bytes] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.ttl = 0.0


@register
class ProxyCache(Plugin):
    name = "proxy-cache"
    priority = 1085
    schema = ProxyCacheConfig

    def __init__(self, conf: ProxyCacheConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.key_parts = [getter(v) for v in conf.cache_key]
        self.bypass = [getter(v) for v in conf.cache_bypass]
        self.no_cache = [getter(v) for v in conf.no_cache]
        self.methods = frozenset(conf.cache_method)
        self.statuses = frozenset(conf.cache_http_status)
        self.store = Store(conf.max_size)

    def access(self, ctx: Ctx) -> Reply | None:
        request = ctx.request
        if request.method not in self.methods:
            return None
        key = "GET\x00" + "\x00".join(part(ctx) or "" for part in self.key_parts)
        if _any_set(self.bypass, ctx):
            ctx.vars[STATE] = _Pending(key, b"BYPASS")
            return None
        full = self.store.variant(key, request)
        entry = self.store.get(full)
        now = clock()
        if entry is not None and now < entry.expires:
            reply = Reply(entry.status, entry.body, entry.headers)
            reply.headers["age"] = str(int(now - entry.stored))
            reply.headers["x-cache-status"] = "HIT"
            return reply
        if entry is not None:
            self.store.drop(full)
        ctx.vars[STATE] = _Pending(key, b"EXPIRED" if entry is not None else b"MISS")
        return None

    def header_filter(self, ctx: Ctx, headers: list[tuple[bytes, bytes]]) -> None:
        pending: _Pending | None = ctx.vars.get(STATE)
        if pending is None:
            return
        ttl = self._storable(ctx, headers)
        if ttl:
            pending.capture, pending.headers, pending.ttl = [], headers, ttl  # the list as later filters leave it
        if self.conf.hide_cache_headers:
            headers[:] = [(k, v) for k, v in headers if k not in CACHE_HEADERS]
        headers.append((b"x-cache-status", pending.label))

    def body_filter(self, ctx: Ctx, chunk: bytes, last: bool) -> None:
        pending: _Pending | None = ctx.vars.get(STATE)
        if pending is None or pending.capture is None:
            return
        if chunk:
            pending.size += len(chunk)
            if pending.size > self.conf.max_entry_size:
                pending.capture = None
                return
            pending.capture.append(chunk)
        if last:
            stored: dict[str, str] = {}
            for name, value in pending.headers:
                if name not in NOT_STORED:
                    text = name.decode("latin-1")
                    decoded = value.decode("latin-1")
                    stored[text] = f"{stored[text]}, {decoded}" if text in stored else decoded
            now = clock()
            entry = Entry(ctx.status, stored, b"".join(pending.capture), now + pending.ttl, now)
            names = tuple(name.strip().lower().encode("latin-1") for value in _values(pending.headers, b"vary")
                          for name in value.split(",") if name.strip())
            self.store.put(pending.key, names, ctx.request, entry)
            pending.capture = None

    def _storable(self, ctx: Ctx, headers: list[tuple[bytes, bytes]]) -> float:
        """The lifetime to store this response for; 0: do not store it."""
        request = ctx.request
        if request.method != "GET" or ctx.status not in self.statuses or _any_set(self.no_cache, ctx):
            return 0.0
        if any(name == b"set-cookie" for name, _ in headers):
            return 0.0
        if any(n.strip() == "*" for v in _values(headers, b"vary") for n in v.split(",")):
            return 0.0
        directives: dict[str, str] = {}
        for value in _values(headers, b"cache-control"):
            for part in value.split(","):
                name, _, arg = part.strip().partition("=")
                directives[name.lower()] = arg.strip().strip('"')
        if request.header(b"authorization") is not None and not ({"public", "s-maxage"} & directives.keys()):
            return 0.0
        if not self.conf.cache_control:
            return self.conf.cache_ttl
        if {"no-store", "private", "no-cache"} & directives.keys():
            return 0.0
        for name in ("s-maxage", "max-age"):
            if name in directives:
                try:
                    return max(float(int(directives[name])), 0.0)
                except ValueError:
                    return 0.0
        expires = next(iter(_values(headers, b"expires")), None)
        if expires is not None:
            try:
                return max(parsedate_to_datetime(expires).timestamp() - time.time(), 0.0)
            except (TypeError, ValueError, IndexError):
                return 0.0  # an invalid Expires means "already expired" (RFC 9111 5.3)
        return self.conf.cache_ttl


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k == name]


def _any_set(getters: list[Any], ctx: Ctx) -> bool:
    for read in getters:
        value = read(ctx)
        if value and value != "0":
            return True
    return False
