"""``client.cache`` promises that had no test (issue 8): stale-while-revalidate serves the stale value
while one caller reloads, ``@cached(key=<function>)``, ``MezzoSync().cache.get_or_set`` with a plain
loader, key listings without repeats, and a TTL of zero."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mezzo import Mezzo
from mezzo.sdk.cache import CacheClient
from mezzo.sdk.cache_patterns import Meta
from mezzo.sdk.client import MezzoSync
from mezzo.sdk.errors import APIError
from mezzo.testing.fixtures import RunningNode, wait_for

from .test_cache_sdk import _value, cache, clients  # noqa: F401  (the cache and clients fixtures)


async def test_a_stale_value_is_served_at_once_while_one_caller_reloads(clients: tuple[Mezzo, Mezzo]) -> None:  # noqa: F811
    a, b = clients
    assert await a.cache.get_or_set("swr", lambda: _value("v1"), 0.2, stale_ttl=60, beta=0) == b"v1"
    found = await a.cache.get_entry("swr")
    meta = Meta.decode(found[1]) if found else None
    assert meta is not None
    await wait_for(lambda: time.time() > meta.fresh_until)  # stale now, still stored
    started, gate = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await gate.wait()
        return "v2"

    reloading = asyncio.create_task(a.cache.get_or_set("swr", slow, 60, stale_ttl=60, beta=0))
    await asyncio.wait_for(started.wait(), 10)
    # meanwhile this process and another one get the stale value without waiting for the load
    assert await asyncio.wait_for(a.cache.get_or_set("swr", slow, 60, stale_ttl=60, beta=0), 10) == b"v1"
    assert await asyncio.wait_for(b.cache.get_or_set("swr", slow, 60, stale_ttl=60, beta=0), 10) == b"v1"
    gate.set()
    assert await reloading == b"v2" and calls == 1
    assert await b.cache.get("swr") == b"v2"


async def test_cached_takes_a_key_function(clients: tuple[Mezzo, Mezzo]) -> None:  # noqa: F811
    a, _ = clients
    calls: list[tuple[int, str]] = []

    @a.cache.cached(ttl=60, key=lambda order_id, currency="EUR": f"order:{order_id}:{currency.lower()}")
    async def order(order_id: int, currency: str = "EUR") -> dict[str, Any]:
        calls.append((order_id, currency))
        return {"id": order_id, "currency": currency}

    assert await order(7) == {"id": 7, "currency": "EUR"} and await order(7) == {"id": 7, "currency": "EUR"}
    assert await order(7, currency="USD") == {"id": 7, "currency": "USD"}
    assert calls == [(7, "EUR"), (7, "USD")]
    assert await a.cache.get("order:7:eur") == b'{"id":7,"currency":"EUR"}'
    assert await a.cache.get("order:7:usd") is not None


async def test_the_sync_client_takes_a_plain_loader(cache: RunningNode) -> None:  # noqa: F811
    def scenario() -> list[object]:
        with MezzoSync(cache.url, cache.token) as sync:
            calls: list[str] = []

            def load() -> str:
                calls.append("load")
                return "from the database"

            first = sync.cache.get_or_set("plain-sync", load, 60)
            second = sync.cache.get_or_set("plain-sync", load, 60)
            return [first, second, calls, sync.cache.get("plain-sync")]

    assert await asyncio.to_thread(scenario) == [b"from the database"] * 2 + [["load"], b"from the database"]


async def test_keys_are_listed_once_when_scan_pages_repeat_one() -> None:
    """SCAN may return a key twice (deleted and written again while it runs); ``keys()`` lists it once."""
    pages = iter([{"items": ["a", "b"], "cursor": 5}, {"items": ["b", "c"], "cursor": 0}])

    class Client:
        async def request(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
            return next(pages)

    assert await CacheClient(Client()).keys() == ["a", "b", "c"]  # type: ignore[arg-type]


async def test_a_ttl_of_zero_is_refused_not_stored_forever(clients: tuple[Mezzo, Mezzo]) -> None:  # noqa: F811
    """``ttl=0`` (say, a remaining lifetime that ran out) was dropped from the request as if no TTL was
    given, so the value was kept for good; the server refuses it as Redis refuses ``EX 0``."""
    a, _ = clients
    with pytest.raises(APIError) as refused:
        await a.cache.set("k0", "v", ttl=0)
    assert refused.value.status == 400 and refused.value.errors[0]["field"].endswith("ttl")
    assert await a.cache.get("k0") is None
