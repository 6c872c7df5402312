"""Route matching: host, path (exact, prefix, parameters, regex), method, headers, query, cookies.

Among the routes that match, the highest ``priority`` wins; at equal priority the more specific
path wins (exact, then parameters, then the longest prefix, then regex), then the route name.
Exact paths are found by one dict lookup, so a large table of exact routes costs nothing extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mezzo.gateway.http import Request
from mezzo.gateway.model import Match, RouteSpec

EXACT, PARAMS, PREFIX, REGEX = 3, 2, 1, 0
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
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _PathRule:
    kind: int
    length: int
    route: CompiledRoute
    prefix: str = ""
    pattern: re.Pattern[str] | None = None


class Router:
    def __init__(self, routes: list[CompiledRoute]) -> None:
        self.exact: dict[str, list[CompiledRoute]] = {}
        self.rules: list[_PathRule] = []
        for route in routes:
            for path in route.spec.paths:
                self._add(path, route)
        # longest prefixes and most specific rules first, so the common case stops early
        self.rules.sort(key=lambda r: (r.kind, r.length), reverse=True)

    def _add(self, path: str, route: CompiledRoute) -> None:
        if path.startswith("~"):
            self.rules.append(_PathRule(REGEX, 0, route, pattern=re.compile(path[1:])))
        elif path.endswith("*"):
            prefix = path[:-1]
            self.rules.append(_PathRule(PREFIX, len(prefix), route, prefix=prefix))
        elif _PARAM.search(path):
            regex = "".join(
                f"(?P<{m.group(1) or m.group(2)}>[^/]+)" if m else re.escape(part)
                for part, m in _split_params(path))
            self.rules.append(_PathRule(PARAMS, len(path), route, pattern=re.compile(f"^{regex}$")))
        else:
            self.exact.setdefault(path, []).append(route)

    def match(self, request: Request) -> tuple[CompiledRoute, dict[str, str]] | None:
        best: tuple[int, int, int, str] | None = None
        found: tuple[CompiledRoute, dict[str, str]] | None = None
        path = request.path
        for route in self.exact.get(path, ()):
            if _accepts(route, request):
                rank = (route.spec.priority, EXACT, len(path), route.ref)
                if best is None or rank > best:
                    best, found = rank, (route, {})
        for rule in self.rules:
            route = rule.route
            if best is not None and (route.spec.priority, rule.kind, rule.length) < best[:3]:
                continue
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
            if not _accepts(route, request):
                continue
            rank = (route.spec.priority, rule.kind, rule.length, route.ref)
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


def _accepts(route: CompiledRoute, request: Request) -> bool:
    if route.methods and request.method not in route.methods:
        return False
    if route.hosts and not any(_host_matches(h, request.host) for h in route.hosts):
        return False
    for where, cond, pattern in route.conditions:
        if where == "header":
            value = request.header(cond.name.lower().encode("latin-1"))
        elif where == "query":
            value = request.args.get(cond.name)
        else:
            value = request.cookies.get(cond.name)
        if not _condition(cond, pattern, value):
            return False
    return True


def _condition(cond: Match, pattern: re.Pattern[str] | None, value: str | None) -> bool:
    if cond.present is not None and (value is not None) != cond.present:
        return False
    if cond.value is not None and value != cond.value:
        return False
    if pattern is not None and (value is None or not pattern.search(value)):
        return False
    return True


def _host_matches(rule: str, host: str) -> bool:
    host = host.split(":", 1)[0].lower()
    if rule.startswith("*."):
        return host.endswith(rule[1:]) and host != rule[2:]
    return host == rule.lower()


def compile_route(namespace: str, name: str, spec: RouteSpec) -> CompiledRoute:
    conditions = tuple(
        (where, m, re.compile(m.regex) if m.regex else None)
        for where, items in (("header", spec.headers), ("query", spec.query), ("cookie", spec.cookies))
        for m in items)
    return CompiledRoute(f"{namespace}/{name}", namespace, name, spec, frozenset(spec.methods),
                         tuple(spec.hosts), conditions)
