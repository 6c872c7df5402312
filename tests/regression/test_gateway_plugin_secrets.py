"""Plugin secrets at rest: a plugin's redisUrl that carries a password is stored sealed.

limit-count and hmac-auth take a ``redisUrl`` such as ``redis://:password@host:6379/0``. Consumer
credentials and certificate keys were sealed, but a Route, Upstream, GlobalRule or Api kept that
URL, password and all, in the store, its history and what ``get`` shows. Now the URL is an
AES-256-GCM ciphertext there too (a URL without a password stays readable), and the gateway opens
it to reach Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.cache_distributed.conftest import redis_servers  # noqa: F401 (fixture)
from integration.cache_distributed.redis_procs import RedisServers
from integration.gateway import conftest as gateway_fixtures
from integration.gateway.conftest import EchoServer, GatewayHandle, route_doc, upstream_doc
from mezzo.config.secrets import PREFIX
from mezzo.jsonutil import loads
from mezzo.resources.service import HISTORY, ResourceService, resource_key
from mezzo.testing.fixtures import start_node, wait_for

upstreams = gateway_fixtures.upstreams
upstream = gateway_fixtures.upstream

PASSWORD = "redis-pass-0123456789"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[GatewayHandle]:
    running = await start_node(tmp_path / "data", targets=["gateway", "apis", "api"])
    try:
        yield GatewayHandle(running, running.node.url("gateway") or "")
    finally:
        await running.node.stop()


async def _stored(gw: GatewayHandle, kind: str, name: str) -> list[bytes]:
    store = gw.node.node.service(ResourceService).store
    current = await store.get(resource_key(kind, "default", name))
    assert current is not None
    history = await store.range(f"{HISTORY}{kind}/default/{name}/")
    return [bytes(current.value), *(bytes(kv.value) for kv in history.items)]


def _limit(url: str, count: int = 2) -> dict[str, Any]:
    return {"limit-count": {"count": count, "window": "60s", "key": "route", "policy": "redis", "redisUrl": url,
                            "degrade": "open"}}


async def _codes(http: httpx.AsyncClient, path: str, n: int) -> list[int]:
    return [(await http.get(path)).status_code for _ in range(n)]


async def test_a_redis_url_with_a_password_is_sealed_and_still_reaches_redis(
        gw: GatewayHandle, upstream: EchoServer, redis_servers: RedisServers) -> None:  # noqa: F811
    locked = redis_servers.start("--requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0"
    plain = f"redis://127.0.0.1:{locked.port}/1"  # no password: nothing to hide, stays readable
    await gw.apply(upstream_doc("up", upstream), route_doc("limited", ["/limited/*"], plugins=_limit(url)),
                   {"kind": "GlobalRule", "metadata": {"name": "nonces"},
                    "spec": {"plugins": {"hmac-auth": {"nonceStore": "redis", "redis_url": url}}}},
                   route_doc("open", ["/open/*"], plugins=_limit(plain, 1000)))
    for kind, name in (("Route", "limited"), ("GlobalRule", "nonces")):
        for raw in await _stored(gw, kind, name):
            assert PASSWORD.encode() not in raw, (kind, raw)
    route = loads((await _stored(gw, "Route", "limited"))[0])["spec"]
    assert route["plugins"]["limit-count"]["redisUrl"].startswith(PREFIX)
    rule = loads((await _stored(gw, "GlobalRule", "nonces"))[0])["spec"]
    assert rule["plugins"]["hmac-auth"]["redis_url"].startswith(PREFIX)  # under the key as written
    assert loads((await _stored(gw, "Route", "open"))[0])["spec"]["plugins"]["limit-count"]["redisUrl"] == plain

    async with gw.node.client() as client:
        shown = await client.resources.get("Route", "limited")
        assert shown.spec["plugins"]["limit-count"]["redisUrl"].startswith(PREFIX)
        (again,) = await client.resources.apply([shown.model_dump(mode="json")])  # get -o yaml | apply
        assert again.action == "unchanged"
    await gw.apply({"kind": "GlobalRule", "metadata": {"name": "nonces"}, "spec": {"plugins": {}}})

    # the gateway opened the URL: the limit is counted in that Redis, with its password
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert await _codes(http, "/limited/x", 3) == [200, 200, 429]
    import redis.asyncio as aioredis

    direct = aioredis.Redis(port=locked.port, password=PASSWORD)
    try:
        assert await direct.dbsize() >= 1
    finally:
        await direct.aclose()


async def test_a_redis_url_with_its_password_in_the_query_is_sealed_too(
        gw: GatewayHandle, upstream: EchoServer, redis_servers: RedisServers) -> None:  # noqa: F811
    locked = redis_servers.start("--requirepass", PASSWORD)
    url = f"redis://127.0.0.1:{locked.port}/0?password={PASSWORD}"  # redis-py takes the password from here
    await gw.apply(upstream_doc("up", upstream), route_doc("limited", ["/limited/*"], plugins=_limit(url)))
    for raw in await _stored(gw, "Route", "limited"):
        assert PASSWORD.encode() not in raw, raw
    async with gw.node.client() as client:
        shown = await client.resources.get("Route", "limited")
        assert shown.spec["plugins"]["limit-count"]["redisUrl"].startswith(PREFIX)
    # and the gateway still reaches that Redis with the password
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert await _codes(http, "/limited/x", 3) == [200, 200, 429]


async def test_an_api_keeps_its_plugin_secrets_sealed_and_its_routes_use_them(
        gw: GatewayHandle, upstream: EchoServer, redis_servers: RedisServers) -> None:  # noqa: F811
    locked = redis_servers.start("--requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked.port}/0"
    await gw.apply(upstream_doc("up", upstream))
    document = {"openapi": "3.0.3", "info": {"title": "Shop", "version": "1"},
                "paths": {"/items": {"get": {"operationId": "items", "responses": {"200": {"description": "ok"}}}}}}
    api = {"apiVersion": "mezzo.dev/v1", "kind": "Api", "metadata": {"name": "shop"},
           "spec": {"document": document, "upstream": "up", "state": "published", "plugins": _limit(url)}}
    async with gw.node.client() as client:
        await client.resources.apply([api])
    for raw in await _stored(gw, "Api", "shop"):
        assert PASSWORD.encode() not in raw
    runtime = gw.runtime
    await wait_for(lambda: any(ref.endswith("/shop:items") for ref in runtime.items["Route"]) and runtime._rebuild is None)
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert await _codes(http, "/items", 3) == [200, 200, 429]


@pytest.mark.parametrize(("plugin", "conf", "expected"), [
    ("limit-count", {"redisUrl": "redis://:pw@h:1/0"}, [("limit-count", "redisUrl")]),
    ("limit-count", {"redis_url": "redis://h:1/0?Password=pw"}, [("limit-count", "redis_url")]),
    ("hmac-auth", {"redisUrl": "rediss://user:pw@h:1"}, [("hmac-auth", "redisUrl")]),
    ("jwt-auth", {"jwksUri": "https://svc:pw@idp.example/jwks.json"}, [("jwt-auth", "jwksUri")]),
    ("jwt-auth", {"jwks_uri": PREFIX + "1234:abcd"}, [("jwt-auth", "jwks_uri")]),  # given back sealed
    ("jwt-auth", {"jwksUri": "https://idp.example/jwks.json"}, []),  # nothing to hide
    ("limit-count", {"redisUrl": "redis://h:1/0?db=2"}, []),
    ("key-auth", {"header": "pw"}, []),
    ("limit-count", None, []),
])
def test_which_plugin_fields_are_sealed(plugin: str, conf: Any, expected: list[tuple[str, str]]) -> None:
    from mezzo.gateway.plugins import secret_paths

    assert list(secret_paths({plugin: conf})) == expected
