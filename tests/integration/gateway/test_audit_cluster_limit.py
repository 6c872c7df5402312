"""Audit: two gateway nodes on one PostgreSQL store — one ``apply`` reaches both — and ``limit-count``
with ``policy: redis`` holding exactly across them (one atomic script per request), with its
``X-RateLimit-*`` headers and ``Retry-After``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.testing import backends
from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, route, start_gateway, upstream

origins = core_fixtures.origins  # fixture
WINDOW = "100000s"  # windows are aligned on Redis's clock: a burst this test sends never straddles two


@pytest.fixture
async def pair(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[GatewayNode, GatewayNode]]:
    one = await start_gateway(tmp_path / "one", store=postgres_url)
    two = await start_gateway(tmp_path / "two", store=postgres_url)
    try:
        yield one, two
    finally:
        await two.running.node.stop()
        await one.running.node.stop()


@pytest.fixture
def limited(unique: str, redis_url: str) -> Iterator[str]:
    """A route name of this test's own: the limiter's Redis keys carry it, and are deleted afterwards."""
    name = f"lc-{unique}"
    yield name
    backends.delete_redis_prefix(redis_url, f"mezzo:gw:limit:route/default/{name}")


async def _apply_on_one_seen_by_both(pair: tuple[GatewayNode, GatewayNode], *docs: dict[str, Any]) -> None:
    one, two = pair
    await one.apply(*docs)
    await wait_for(lambda: two.gateway.covers(one.last_applied))


async def _burst(urls: list[str], path: str, count: int, **kw: Any) -> list[httpx.Response]:
    """``count`` requests at once, spread over the nodes."""
    clients = [httpx.AsyncClient(base_url=url, timeout=10) for url in urls]
    try:
        return list(await asyncio.gather(*(clients[i % len(clients)].get(path, **kw) for i in range(count))))
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("algorithm", ["fixed", "sliding"])
async def test_redis_limit_holds_exactly_across_nodes(pair: tuple[GatewayNode, GatewayNode], origins,
                                                      limited: str, redis_url: str, algorithm: str) -> None:
    (a,) = await origins(1)
    # degrade closed and a long timeout: a Redis call slowed by a loaded machine must not be let through
    conf = {"count": 7, "window": WINDOW, "policy": "redis", "redisUrl": redis_url, "algorithm": algorithm,
            "degrade": "closed", "redisTimeout": "10s"}
    await _apply_on_one_seen_by_both(pair, upstream("up", a), route(limited, ["/*"], plugins={"limit-count": conf}))
    answers = await _burst([n.url for n in pair], "/x", 40)
    allowed = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(allowed) == 7, [r.status_code for r in answers]  # per node (local) it would be 14
    assert {r.status_code for r in refused} == {429}
    assert a.requests == 7
    # one atomic script per request: every allowed request saw its own count
    assert sorted(int(r.headers["x-ratelimit-remaining"]) for r in allowed) == list(range(7))
    assert all(r.headers["x-ratelimit-limit"] == "7" for r in answers)
    assert all(int(r.headers["x-ratelimit-reset"]) > 0 for r in answers)
    for r in refused:
        assert r.headers["x-ratelimit-remaining"] == "0" and int(r.headers["retry-after"]) >= 1
        assert r.headers["content-type"] == "application/problem+json" and r.json()["status"] == 429


async def test_keys_are_counted_apart_across_nodes(pair: tuple[GatewayNode, GatewayNode], origins,
                                                   limited: str, redis_url: str) -> None:
    (a,) = await origins(1)
    conf = {"count": 3, "window": WINDOW, "policy": "redis", "redisUrl": redis_url, "key": "header",
            "keyName": "x-user"}
    await _apply_on_one_seen_by_both(pair, upstream("up", a), route(limited, ["/*"], plugins={"limit-count": conf}))
    urls = [n.url for n in pair]
    for user in ("ann", "bob"):
        answers = await _burst(urls, "/x", 10, headers={"x-user": user})
        assert sorted(r.status_code for r in answers) == [200] * 3 + [429] * 7, user


async def test_a_change_applied_on_one_node_is_served_by_both(pair: tuple[GatewayNode, GatewayNode], origins) -> None:
    a, b = await origins(2)
    await _apply_on_one_seen_by_both(pair, upstream("one", a), upstream("two", b), route("r", ["/*"], "one"))
    async with httpx.AsyncClient() as http:
        assert {(await http.get(f"{n.url}/x")).json()["node"] for n in pair} == {"a"}
        await _apply_on_one_seen_by_both(pair, route("r", ["/*"], "two"))
        assert {(await http.get(f"{n.url}/x")).json()["node"] for n in pair} == {"b"}
