"""Gateway core, the route cache: verdicts kept by (host, method, path) only while no route has conditions."""

from __future__ import annotations

import httpx

from mezzo.gateway import router as router_module
from mezzo.gateway.http import Request
from mezzo.gateway.model import RouteSpec
from mezzo.gateway.router import Router, compile_route

from . import core_fixtures
from .core_fixtures import GatewayNode, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


def _request(path: str, host: str = "gw.test", method: str = "GET",
             headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    request = Request(method, path.encode(), [(b"host", host.encode()), *(headers or [])], "127.0.0.1", "1.1", True)
    request.host = host
    return request


def _router(*routes: tuple[str, dict]) -> Router:  # type: ignore[type-arg]
    return Router([compile_route("default", name, RouteSpec.model_validate({"upstream": "up", **spec}))
                   for name, spec in routes])


def test_verdicts_are_cached_per_host_method_and_path() -> None:
    router = _router(("items", {"paths": ["/items/{id}"], "methods": ["GET"]}),
                     ("api", {"paths": ["/api/*"], "hosts": ["api.test"]}))
    assert router.cache == {}
    first = router.match(_request("/items/7"))
    assert first is not None and first[0].name == "items" and first[1] == {"id": "7"}
    first[1]["id"] = "changed by a plugin"
    again = router.match(_request("/items/7"))
    assert again is not None and again[1] == {"id": "7"}  # each caller gets its own params
    assert router.match(_request("/items/7", method="POST")) is None
    assert router.match(_request("/api/x")) is None
    found = router.match(_request("/api/x", host="api.test"))
    assert found is not None and found[0].name == "api"
    assert len(router.cache) == 4  # type: ignore[arg-type]


def test_cache_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(router_module, "CACHE_SIZE", 3)
    router = _router(("all", {"paths": ["/*"]}))
    for i in range(7):
        assert router.match(_request(f"/{i}")) is not None
    assert router.cache is not None and 1 <= len(router.cache) <= 3


def test_no_cache_when_a_route_has_conditions() -> None:
    router = _router(("plain", {"paths": ["/*"]}),
                     ("beta", {"paths": ["/*"], "priority": 1, "headers": [{"name": "x-beta", "value": "1"}]}))
    assert router.cache is None
    beta = router.match(_request("/x", headers=[(b"x-beta", b"1")]))
    plain = router.match(_request("/x"))
    assert beta is not None and beta[0].name == "beta" and plain is not None and plain[0].name == "plain"


async def test_a_change_is_seen_at_once(gw: GatewayNode, origins) -> None:
    a, b = await origins(2)
    await gw.apply(upstream("one", a), upstream("two", b), route("r", ["/r/*"], "one"))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        assert [(await http.get("/r/x")).json()["node"] for _ in range(2)] == ["a", "a"]  # cached the second time
        await gw.apply(route("r", ["/r/*"], "two"))
        assert (await http.get("/r/x")).json()["node"] == "b"
        await gw.apply(route("s", ["/r/x"], "one"))  # a more specific route for a cached path
        assert (await http.get("/r/x")).json()["node"] == "a"
