"""``client.cache`` against a live node: near cache with invalidation, stampede protection, tags, reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from mezzo import Mezzo
from mezzo.sdk.cache_patterns import LOCK_SUFFIX, Meta
from mezzo.sdk.client import MezzoSync
from mezzo.sdk.errors import APIError, ConnectError, NotFound
from mezzo.testing.fixtures import RunningNode, start_node, wait_for


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data", cache_snapshot=False)
    try:
        yield running
    finally:
        await running.node.stop()


@pytest.fixture
async def clients(cache: RunningNode) -> AsyncIterator[tuple[Mezzo, Mezzo]]:
    a, b = cache.client(), cache.client()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def _value(text: str) -> str:
    return text


def resp_port(node: RunningNode) -> int:
    return int(node.node.url("resp").rsplit(":", 1)[1])


# near cache -------------------------------------------------------------------------------


async def test_near_cache_serves_locally_until_another_client_writes(clients: tuple[Mezzo, Mezzo]) -> None:
    a, b = clients
    await b.cache.set("user:1", "ada", namespace="nc")
    near = await a.cache.near_cache("nc", max_keys=100, max_ttl=60)
    assert near.live
    assert await a.cache.get("user:1", "nc") == b"ada"
    assert "user:1" in near.entries
    hits = near.hits
    assert await a.cache.get("user:1", "nc") == b"ada" and near.hits == hits + 1  # no request this time

    await b.cache.set("user:1", "grace", namespace="nc")  # another client writes: the server tells a
    await wait_for(lambda: "user:1" not in near.entries)
    assert await a.cache.get("user:1", "nc") == b"grace"

    async def load() -> str:
        raise AssertionError("a fresh entry held near is not loaded again")

    await b.cache.get_or_set("profile", lambda: _value("p1"), 60, namespace="nc", beta=0)
    assert await a.cache.get_or_set("profile", load, 60, namespace="nc", beta=0) == b"p1"
    hits = near.hits
    assert await a.cache.get_or_set("profile", load, 60, namespace="nc", beta=0) == b"p1" and near.hits == hits + 1

    await a.cache.get("user:1", "nc")
    assert "user:1" in near.entries
    await b.cache.delete("user:1", "nc")
    await wait_for(lambda: "user:1" not in near.entries)
    assert await a.cache.get("user:1", "nc") is None


async def test_writes_over_the_redis_protocol_expiry_and_tags_invalidate(cache: RunningNode,
                                                                         clients: tuple[Mezzo, Mezzo]) -> None:
    a, b = clients
    r = aioredis.Redis(host="127.0.0.1", port=resp_port(cache), password=cache.token)
    try:
        await r.set("k", "v1")
        await b.cache.set("short", "s", ttl=0.3)
        await b.cache.set("tagged", "t", tags=["group"])
        near = await a.cache.near_cache("default", max_ttl=60)
        for key in ("k", "short", "tagged"):
            assert await a.cache.get(key) is not None and key in near.entries
        await r.set("k", "v2")  # a Redis client writes the same engine
        await wait_for(lambda: "k" not in near.entries)
        assert await a.cache.get("k") == b"v2"
        await wait_for(lambda: "short" not in near.entries, timeout=15)  # expired on the server: dropped here
        assert await b.cache.invalidate_tag("group") == 1
        await wait_for(lambda: "tagged" not in near.entries)
        assert await a.cache.get("tagged") is None
        await r.flushdb()
        await a.cache.get("k")
        assert near.flushes >= 1
    finally:
        await r.aclose()


async def test_near_cache_flushes_and_is_bypassed_while_disconnected(tmp_path: Path) -> None:
    running = await start_node(tmp_path / "data", cache_snapshot=False)
    port = int(running.url.rsplit(":", 1)[1])
    client = running.client()
    try:
        await client.cache.set("k", "v", namespace="nc")
        near = await client.cache.near_cache("nc")
        assert await client.cache.get("k", "nc") == b"v" and near.entries
        await running.node.stop()
        await wait_for(lambda: not near.live)
        assert not near.entries  # flushed on disconnect
        with pytest.raises(ConnectError):
            await client.cache.get("k", "nc")  # bypassed: the stale copy is not served

        running = await start_node(tmp_path / "data2", cache_snapshot=False, api_port=port)
        await wait_for(lambda: near.live, timeout=20)  # reconnects by itself
        await client.cache.set("k", "w", namespace="nc")
        assert await client.cache.get("k", "nc") == b"w" and "k" in near.entries
    finally:
        await client.aclose()
        await running.node.stop()


async def test_near_cache_limits_come_from_arguments(clients: tuple[Mezzo, Mezzo]) -> None:
    a, b = clients
    near = await a.cache.near_cache("lim", max_keys=2, max_ttl=0.2)
    for key in ("x", "y", "z"):
        await b.cache.set(key, key, namespace="lim")
        await a.cache.get(key, "lim")
    assert list(near.entries) == ["y", "z"]
    await wait_for(lambda: near.get("z") is None)  # max TTL: the copy goes even without an invalidation
    assert await a.cache.get("z", "lim") == b"z"


# stampede protection ----------------------------------------------------------------------


async def test_single_flight_across_coroutines_and_clients(clients: tuple[Mezzo, Mezzo]) -> None:
    a, b = clients
    calls = 0
    gate = asyncio.Event()

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "loaded"

    async def release_when_waiting() -> None:
        await wait_for(lambda: calls == 1)
        gate.set()

    waiters = [a.cache.get_or_set("sf", loader, 60) for _ in range(20)]
    waiters += [b.cache.get_or_set("sf", loader, 60) for _ in range(20)]  # another "process": own flights
    results = await asyncio.gather(*waiters, release_when_waiting())
    assert results[:-1] == [b"loaded"] * 40 and calls == 1
    assert await a.cache.get("sf") == b"loaded"
    found = await a.cache.get_entry("sf")
    assert found is not None and found[0] == b"loaded" and Meta.decode(found[1]) is not None
    assert await a.cache.get(f"sf{LOCK_SUFFIX}") is None  # the lock is released


async def test_single_flight_across_real_processes(cache: RunningNode, tmp_path: Path) -> None:
    import os
    import sys

    marker = tmp_path / "calls"
    started = tmp_path / "started"
    started.mkdir()
    script = f"""
import asyncio, os, pathlib, time
from mezzo import Mezzo

async def main():
    async with Mezzo({cache.url!r}, {cache.token!r}) as m:
        async def loader():
            with open({str(marker)!r}, "a") as fh:
                fh.write("x")
            deadline = time.monotonic() + 30
            while len(list(pathlib.Path({str(started)!r}).iterdir())) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # hold the load until every process is asking too
            return "from-" + str(os.getpid())
        (pathlib.Path({str(started)!r}) / str(os.getpid())).touch()
        print((await m.cache.get_or_set("xp", loader, 60)).decode())

asyncio.run(main())
"""
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
                                                  env={**os.environ}) for _ in range(4)]
    outputs = [(await p.communicate())[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert marker.read_text() == "x" and len(set(outputs)) == 1


async def test_a_dead_lock_holder_is_taken_over(clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients
    await a.cache.set(f"dl{LOCK_SUFFIX}", "someone-who-died", ttl=0.3)
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        return "mine"

    assert await a.cache.get_or_set("dl", loader, 60, lock_ttl=5) == b"mine" and calls == 1


async def test_stale_while_revalidate_and_stale_if_error(clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients

    async def first() -> str:
        return "v1"

    async def failing() -> str:
        raise RuntimeError("database down")

    async def second() -> str:
        return "v2"

    assert await a.cache.get_or_set("swr", first, 0.2, stale_ttl=60, beta=0) == b"v1"
    found = await a.cache.get_entry("swr")
    meta = Meta.decode(found[1]) if found else None
    assert meta is not None and found is not None and found[0] == b"v1"
    await wait_for(lambda: time.time() > meta.fresh_until)  # now stale, still stored
    assert await a.cache.get_or_set("swr", failing, 0.2, stale_ttl=60, beta=0) == b"v1"
    assert await a.cache.get_or_set("swr", second, 60, beta=0) == b"v2"
    with pytest.raises(RuntimeError):
        await a.cache.get_or_set("absent-and-failing", failing, 60)


async def test_negative_caching(clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients
    calls = 0

    async def nothing() -> None:
        nonlocal calls
        calls += 1
        return None

    assert await a.cache.get_or_set("neg", nothing, 60, negative_ttl=60) is None
    assert await a.cache.get_or_set("neg", nothing, 60, negative_ttl=60) is None and calls == 1
    assert await a.cache.get("neg") is None and await a.cache.get_entry("neg") is not None
    assert await a.cache.get_or_set("uncached", nothing, 60) is None
    assert await a.cache.get_entry("uncached") is None  # without negative_ttl, absence is not stored


async def test_xfetch_refreshes_early(clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # a load that takes time: delta > 0
        return f"v{calls}"

    assert await a.cache.get_or_set("xf", loader, 3600, beta=0) == b"v1"
    assert await a.cache.get_or_set("xf", loader, 3600, beta=0) == b"v1" and calls == 1  # fresh: no refresh
    # beta this large makes the early-refresh draw certain although the hour is far from over
    assert await a.cache.get_or_set("xf", loader, 3600, beta=1e9) == b"v2" and calls == 2


async def test_tags_and_the_decorator(clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients
    calls: list[int] = []

    @a.cache.cached(ttl=60, key="user:{user_id}", tags=["users", "user:{user_id}"])
    async def user(user_id: int, verbose: bool = False) -> dict[str, object]:
        calls.append(user_id)
        return {"id": user_id, "name": f"u{user_id}"}

    @a.cache.cached(ttl=60)
    async def plain(x: int) -> list[int]:
        calls.append(-x)
        return [x, x]

    assert await user(1) == {"id": 1, "name": "u1"} and await user(1) == {"id": 1, "name": "u1"}
    assert await user(2) == {"id": 2, "name": "u2"} and calls == [1, 2]
    assert await plain(3) == [3, 3] and await plain(3) == [3, 3] and calls == [1, 2, -3]
    assert await a.cache.invalidate_tag("user:1") == 1
    assert await user(1) == {"id": 1, "name": "u1"} and calls == [1, 2, -3, 1]
    assert await a.cache.invalidate_tag("users") == 2
    assert await a.cache.invalidate_tag("nothing-has-it") == 0


async def test_the_decorator_on_sync_functions_with_the_sync_client(cache: RunningNode) -> None:
    def scenario() -> list[object]:
        with MezzoSync(cache.url, cache.token) as sync:
            calls: list[int] = []

            @sync.cache.cached(ttl=60, key="sq:{n}")
            def square(n: int) -> int:
                calls.append(n)
                return n * n

            return [square(4), square(4), square(5), calls, sync.cache.get("sq:4")]

    assert await asyncio.to_thread(scenario) == [16, 16, 25, [4, 5], b"16"]


# API edges and reports --------------------------------------------------------------------


async def test_compare_and_delete_and_bad_input(cache: RunningNode, clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients
    await a.cache.set("lock", "owner-1")
    assert not await a.cache.delete("lock", if_value="owner-2") and await a.cache.get("lock") == b"owner-1"
    assert await a.cache.delete("lock", if_value="owner-1") and await a.cache.get("lock") is None
    headers = {"Authorization": f"Bearer {cache.token}"}
    async with httpx.AsyncClient(base_url=cache.url, headers=headers) as http:
        await http.put("/v1/cache/default/keys/x", json={"value": "1"})
        answer = await http.delete("/v1/cache/default/keys/x", params={"ifValue": "2"})
        assert answer.status_code == 412 and answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"] == [{"field": "ifValue", "reason": "does not match the key's value"}]
        bad = await http.put("/v1/cache/default/keys/x", json={"value": "1", "tags": ["a/b"]})
        assert bad.status_code == 400 and "tags" in str(bad.json()["errors"])
        bad = await http.put("/v1/cache/default/keys/x", json={"value": "1", "tags": ["t"] * 33})
        assert bad.status_code == 400
        bad = await http.put("/v1/cache/default/keys/x", json={"value": "1", "meta": "m" * 1025})
        assert bad.status_code == 400 and "meta" in str(bad.json()["errors"])
        bad = await http.post(f"/v1/cache/default/tags/{'t' * 300}:invalidate")
        assert bad.status_code == 400 and bad.json()["errors"] == [
            {"field": "tag", "reason": "a tag is at most 256 characters, without '/'"}]
        noted = await http.put("/v1/cache/default/keys/n", json={"value": "1", "meta": "note"})
        assert noted.status_code == 204 and (await http.get("/v1/cache/default/keys/n")).json()["meta"] == "note"
        await http.put("/v1/cache/default/keys/n", json={"value": "2"})  # a write without it drops it
        assert "meta" not in (await http.get("/v1/cache/default/keys/n")).json()
        bad = await http.get("/v1/cache/default/hotkeys", params={"limit": 0})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"].endswith("limit")
        bad = await http.get("/v1/cache/default/invalidations", params={"heartbeat": "soon"})
        assert bad.status_code == 400
    with pytest.raises(APIError) as missing:
        await a.cache.hotkeys("no-such-namespace")
    assert missing.value.status == 404


async def test_stats_hot_keys_and_metrics(cache: RunningNode, clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients
    r = aioredis.Redis(host="127.0.0.1", port=resp_port(cache), password=cache.token)
    try:
        await r.set("big", "x" * 200_000)
        for i in range(100):
            await r.set(f"k{i}", "v")
        pipe = r.pipeline(transaction=False)
        for _ in range(3000):
            pipe.get("hot")
        await pipe.execute()
    finally:
        await r.aclose()
    stats = await a.cache.stats()
    assert stats["ops"] >= 3101 and stats["misses"] >= 3000 and stats["hitRatio"] is not None
    report = await a.cache.hotkeys(limit=3)
    assert report["hot"][0]["key"] == "hot" and report["hot"][0]["ops"] > 1000
    assert report["big"][0]["key"] == "big" and report["big"][0]["bytes"] > 200_000
    headers = {"Authorization": f"Bearer {cache.token}"}
    async with httpx.AsyncClient(base_url=cache.url, headers=headers) as http:
        metrics = (await http.get("/metrics")).text
    assert 'mezzo_cache_ops_total{namespace="default"}' in metrics
    assert 'mezzo_cache_hot_key_ops{key="hot",namespace="default"}' in metrics
    assert 'mezzo_cache_big_key_bytes{key="big",namespace="default"}' in metrics
    assert 'mezzo_cache_hit_ratio{namespace="default"}' in metrics


async def test_near_cache_settings_from_the_cache_kind(clients: tuple[Mezzo, Mezzo]) -> None:
    a, _ = clients
    await a.resources.apply([{"apiVersion": "mezzo.dev/v1", "kind": "Cache", "metadata": {"name": "sessions"},
                              "spec": {"nearCache": {"enabled": True, "maxKeys": 3, "maxTTL": "2s"}}}])
    near = await a.cache.near_cache_from_settings("sessions")
    assert near is not None and near.live and near.max_keys == 3 and near.max_ttl == 2.0
    assert await a.cache.near_cache_from_settings("undeclared") is None
    explicit = await a.cache.near_cache("undeclared", max_keys=7)
    assert explicit.max_keys == 7 and explicit.max_ttl == 60.0


async def test_a_distributed_namespace_through_the_api(clients: tuple[Mezzo, Mezzo], redis_url: str,
                                                       redis_prefix: str, unique: str) -> None:
    a, _ = clients
    name = f"dist{unique}"
    await a.resources.apply([{"apiVersion": "mezzo.dev/v1", "kind": "Cache", "metadata": {"name": name},
                              "spec": {"backend": "redis", "url": redis_url}}])

    async def is_distributed() -> bool:  # the node applies the resource after the apply answers
        try:
            return (await a.cache.nodes(name)).get("backend") == "redis"
        except NotFound:
            return False

    await wait_for(is_distributed)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        key = f"{redis_prefix}k"
        assert await a.cache.set(key, "v", ttl=60, namespace=name)
        assert await direct.get(key) == b"v" and 0 < await direct.pttl(key) <= 60_000  # it is on the node
        assert await a.cache.get(key, name) == b"v"
        assert not await a.cache.set(key, "w", namespace=name, nx=True)
        assert not await a.cache.delete(key, name, if_value="other") and await a.cache.get(key, name) == b"v"
        assert await a.cache.delete(key, name, if_value="v") and await direct.get(key) is None
        assert not await a.cache.delete(key, name)

        calls = 0

        async def loader() -> str:
            nonlocal calls
            calls += 1
            return "loaded"

        results = await asyncio.gather(*(a.cache.get_or_set(f"{redis_prefix}g", loader, 60, namespace=name)
                                         for _ in range(5)))
        assert results == [b"loaded"] * 5 and calls == 1
        assert await direct.get(f"{redis_prefix}g") == b"loaded"  # the value as it is, for any client
        assert b'"n":false' in (await direct.get(f"{redis_prefix}g.mezzo-meta") or b"")
        assert await a.cache.get_or_set(f"{redis_prefix}g", loader, 60, namespace=name) == b"loaded" and calls == 1
        with pytest.raises(APIError) as refused:
            await a.cache.set(f"{redis_prefix}t", "v", namespace=name, tags=["x"])
        assert refused.value.status == 400 and refused.value.errors[0]["field"] == "tags"
        with pytest.raises(APIError) as refused:
            await a.cache.near_cache(name, wait=10)
        assert refused.value.status == 409 and "distributed" in str(refused.value.detail)
        with pytest.raises(APIError) as refused:
            await a.cache.stats(name)
        assert refused.value.status == 409
    finally:
        await direct.aclose()


async def test_plain_loaders_run_off_the_event_loop(clients: tuple[Mezzo, Mezzo]) -> None:
    import threading

    a, _ = clients
    loop_thread = threading.get_ident()
    ran_on: list[int] = []

    def blocking_loader() -> str:
        ran_on.append(threading.get_ident())
        return "from a thread"

    assert await a.cache.get_or_set("plain", blocking_loader, 60) == b"from a thread"
    assert ran_on and ran_on[0] != loop_thread
