"""Route matching: host, path (exact, prefix, parameters, regex), method, headers, query, cookies.

Among the routes that match, the highest ``priority`` wins; at equal priority the more specific
host wins (exact, then the longest wildcard, then routes without hosts), then the more specific
path (exact, then parameters, then the longest prefix, then regex), then the route name.
Exact paths are found by one dict lookup, so a large table of exact routes costs nothing extra.
When no route looks at headers, query or cookies, the verdict for a (host, method, path) is kept
in a bounded cache; a configuration change builds a new Router, so the cache never outlives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mezzo.gateway.http import Request
from mezzo.gateway.model import Match, RouteSpec

EXACT, PARAMS, PREFIX, REGEX = 3, 2, 1, 0
CACHE_SIZE = 4096  # (host, method, path) verdicts kept; the cache starts over when full
_MISS = object()
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|:([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(slots=True)
class CompiledRoute:
    ref: str  # namespace/name
    namespace: str
    name: str
    spec: RouteSpec
    methods: frozenset[str]
    hosts: tuple[str, ...]
    conditions: tuple[tuple[str, Match, re.Pattern[str] | None], ...]
    chain: Any = None  # the plugin chain (plugins.Chain), set by the runtime
    upstream: Any = None  # the Balancer, set by the runtime
    body_filters: tuple[Any, ...] = ()  # plugins' body_filter(ctx, chunk, last) methods, set by the runtime
    async_chain: bool = False  # some rewrite or access phase is a coroutine (set by the runtime)
    lean: bool = True  # no plugin reads the response's headers or body (set by the runtime)
    direct: bool = False  # published, an upstream, no rewrite or access phase: proxied at once (set by the runtime)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _PathRule:
    kind: int
    length: int
    route: CompiledRoute
    prefix: str = ""
    pattern: re.Pattern[str] | None = None
    priority: int = 0


class Router:
    def __init__(self, routes: list[CompiledRoute]) -> None:
        self.exact: dict[str, list[CompiledRoute]] = {}
        self.rules: list[_PathRule] = []
        for route in routes:
            for path in route.spec.paths:
                self._add(path, route)
        # highest priority, then the most specific rules first, so the common case stops early
        self.rules.sort(key=lambda r: (r.priority, r.kind, r.length), reverse=True)
        for candidates in self.exact.values():
            candidates.sort(key=lambda r: (r.spec.priority, r.ref), reverse=True)
        # a verdict depends on (host, method, path) alone unless some route has conditions
        self.cache: dict[tuple[str, str, str], tuple[CompiledRoute, dict[str, str]] | None] | None = \
            None if any(route.conditions for route in routes) else {}

    def _add(self, path: str, route: CompiledRoute) -> None:
        priority = route.spec.priority
        if path.startswith("~"):
            self.rules.append(_PathRule(REGEX, 0, route, pattern=re.compile(path[1:]), priority=priority))
        elif path.endswith("*"):
            prefix = path[:-1]
            self.rules.append(_PathRule(PREFIX, len(prefix), route, prefix=prefix, priority=priority))
        elif _PARAM.search(path):
            regex = "".join(
                f"(?P<{m.group(1) or m.group(2)}>[^/]+)" if m else re.escape(part)
                for part, m in _split_params(path))
            self.rules.append(_PathRule(PARAMS, len(path), route, pattern=re.compile(f"^{regex}$"),
                                        priority=priority))
        else:
            self.exact.setdefault(path, []).append(route)

    def match(self, request: Request) -> tuple[CompiledRoute, dict[str, str]] | None:
        cache = self.cache
        if cache is None:
            return self._match(request)
        key = (request.host, request.method, request.path)
        found = cache.get(key, _MISS)
        if found is _MISS:
            found = self._match(request)
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[key] = found
        if found is not None and found[1]:  # type: ignore[index]
            return found[0], dict(found[1])  # type: ignore[index]  # the caller's own params
        return found  # type: ignore[return-value]

    def _match(self, request: Request) -> tuple[CompiledRoute, dict[str, str]] | None:
        best: tuple[int, int, int, int, str] | None = None
        found: tuple[CompiledRoute, dict[str, str]] | None = None
        path = request.path
        host = _bare_host(request.host)
        for route in self.exact.get(path, ()):
            host_rank = _accepts(route, request, host)
            if host_rank >= 0:
                rank = (route.spec.priority, host_rank, EXACT, len(path), route.ref)
                if best is None or rank > best:
                    best, found = rank, (route, {})
        for rule in self.rules:
            if best is not None:
                if rule.priority < best[0]:
                    break  # sorted: nothing further can win
                if best[1] == HOST_EXACT and (rule.kind, rule.length) < best[2:4]:
                    continue
            route = rule.route
            params: dict[str, str] = {}
            if rule.kind == PREFIX:
                if not (path.startswith(rule.prefix) or path == rule.prefix.rstrip("/")):
                    continue
            else:
                assert rule.pattern is not None
                m = rule.pattern.search(path) if rule.kind == REGEX else rule.pattern.match(path)
                if m is None:
                    continue
                params = {k: v for k, v in m.groupdict().items() if v is not None}
            host_rank = _accepts(route, request, host)
            if host_rank < 0:
                continue
            rank = (rule.priority, host_rank, rule.kind, rule.length, route.ref)
            if best is None or rank > best:
                best, found = rank, (route, params)
        return found


def _split_params(path: str) -> list[tuple[str, re.Match[str] | None]]:
    out: list[tuple[str, re.Match[str] | None]] = []
    pos = 0
    for m in _PARAM.finditer(path):
        if m.start() > pos:
            out.append((path[pos:m.start()], None))
        out.append(("", m))
        pos = m.end()
    if pos < len(path):
        out.append((path[pos:], None))
    return out


HOST_EXACT = 1 << 20  # above any wildcard's rank (its length)


def _bare_host(host: str) -> str:
    """The Host header's name, lowercase, without the port ("[::1]:80" is "[::1]")."""
    if host.startswith("["):
        return host[:host.find("]") + 1].lower()
    return host.partition(":")[0].lower()


def _accepts(route: CompiledRoute, request: Request, host: str) -> int:
    """-1 if the route does not take the request, else how specifically its hosts matched."""
    if route.methods and request.method not in route.methods:
        return -1
    rank = 0
    if route.hosts:
        rank = -1
        for rule in route.hosts:
            if rule.startswith("*."):
                if host.endswith(rule[1:]) and len(host) > len(rule) - 1:
                    rank = max(rank, len(rule))
            elif host == rule:
                rank = HOST_EXACT
                break
        if rank < 0:
            return -1
    for where, cond, pattern in route.conditions:
        if where == "header":
            value = request.header(cond.name.lower().encode("latin-1"))
        elif where == "query":
            value = request.args.get(cond.name)
        else:
            value = request.cookies.get(cond.name)
        if not _condition(cond, pattern, value):
            return -1
    return rank


def _condition(cond: Match, pattern: re.Pattern[str] | None, value: str | None) -> bool:
    if cond.present is not None and (value is not None) != cond.present:
        return False
    if cond.value is not None and value != cond.value:
        return False
    if pattern is not None and (value is None or not pattern.search(value)):
        return False
    return True


def compile_route(namespace: str, name: str, spec: RouteSpec) -> CompiledRoute:
    conditions = tuple(
        (where, m, re.compile(m.regex) if m.regex else None)
        for where, items in (("header", spec.headers), ("query", spec.query), ("cookie", spec.cookies))
        for m in items)
    return CompiledRoute(f"{namespace}/{name}", namespace, name, spec, frozenset(spec.methods),
                         tuple(h.lower() for h in spec.hosts), conditions)
