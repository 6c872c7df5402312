"""Audit: the matching order documented in docs/gateway.md, case by case against the router itself
(priority, then host, then path kind, then name), and conditions the end-to-end test leaves out."""

from __future__ import annotations

from typing import Any

from .test_core_router_cache import _request, _router


def _winner(routes: list[tuple[str, dict[str, Any]]], path: str, **kw: Any) -> str | None:
    """The route that takes the request, checked to be the same whatever order the routes come in."""
    found = [_router(*order).match(_request(path, **kw)) for order in (routes, routes[::-1])]
    names = [f[0].name if f is not None else None for f in found]
    assert names[0] == names[1], names
    return names[0]


def test_priority_comes_first() -> None:
    routes = [("exact", {"paths": ["/a/b"]}), ("prefix", {"paths": ["/a/*"], "priority": 2}),
              ("exact-high", {"paths": ["/a/b"], "priority": 1})]
    assert _winner(routes, "/a/b") == "prefix"  # a higher priority beats a more specific path
    assert _winner(routes[::2], "/a/b") == "exact-high"  # and decides between two exact paths


def test_then_the_most_specific_host() -> None:
    routes = [("none", {"paths": ["/x"]}), ("wide", {"paths": ["/x"], "hosts": ["*.example.com"]}),
              ("narrow", {"paths": ["/x"], "hosts": ["*.eu.example.com"]}),
              ("exact", {"paths": ["/x"], "hosts": ["api.eu.example.com"]})]
    assert _winner(routes, "/x", host="api.eu.example.com") == "exact"
    assert _winner(routes, "/x", host="web.eu.example.com") == "narrow"
    assert _winner(routes, "/x", host="web.example.com") == "wide"
    assert _winner(routes, "/x", host="other.org") == "none"
    # the host ranks before the path: an exact host with a prefix beats no host with an exact path
    hosted = [("exact-path", {"paths": ["/x"]}), ("hosted-prefix", {"paths": ["/*"], "hosts": ["h.test"]})]
    assert _winner(hosted, "/x", host="h.test:8080") == "hosted-prefix"


def test_then_the_path_kind() -> None:
    routes = [("regex", {"paths": ["~^/u/.*$"]}), ("short", {"paths": ["/u/*"]}), ("long", {"paths": ["/u/7/*"]}),
              ("params", {"paths": ["/u/{id}/x"]}), ("exact", {"paths": ["/u/7/x"]})]
    assert _winner(routes, "/u/7/x") == "exact"
    assert _winner(routes, "/u/8/x") == "params"
    assert _winner(routes, "/u/7/y") == "long"
    assert _winner(routes, "/u/8/y") == "short"
    assert _winner(routes[:1], "/u/8/y") == "regex"


def test_then_the_name_and_parameters_are_captured() -> None:
    twins = [("alpha", {"paths": ["/t/*"]}), ("beta", {"paths": ["/t/*"]})]
    assert _winner(twins, "/t/1") in ("alpha", "beta")  # stable whatever the order (checked in _winner)
    router = _router(("colon", {"paths": ["/o/:order/i/{item}"]}), ("named", {"paths": [r"~^/r/(?P<year>\d{4})$"]}))
    assert router.match(_request("/o/12/i/3")) is not None
    assert router.match(_request("/o/12/i/3"))[1] == {"order": "12", "item": "3"}  # type: ignore[index]
    assert router.match(_request("/r/2024"))[1] == {"year": "2024"}  # type: ignore[index]
    assert router.match(_request("/o/12/i/3/4")) is None


def test_conditions_all_hold() -> None:
    routes = [
        ("absent", {"paths": ["/c"], "headers": [{"name": "x-debug", "present": False}]}),
        ("both", {"paths": ["/c"], "priority": 1, "query": [{"name": "v", "value": "2"}],
                  "cookies": [{"name": "group", "regex": "^beta-"}]}),
    ]
    assert _winner(routes, "/c?v=2", headers=[(b"cookie", b"a=1; group=beta-7")]) == "both"
    assert _winner(routes, "/c?v=2", headers=[(b"cookie", b"group=alpha-7")]) == "absent"  # the cookie fails
    assert _winner(routes, "/c?v=3", headers=[(b"cookie", b"group=beta-7")]) == "absent"  # the query fails
    assert _winner(routes, "/c", headers=[(b"x-debug", b"")]) is None  # present, even empty
    methods = [("read", {"paths": ["/m"], "methods": ["GET"]}), ("write", {"paths": ["/m"], "methods": ["put", "POST"]})]
    assert [_winner(methods, "/m", method=m) for m in ("GET", "PUT", "POST", "DELETE")] == \
        ["read", "write", "write", None]
