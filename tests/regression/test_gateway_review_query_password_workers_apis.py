"""Review of the gateway's plugin secrets at rest (44c1380): two bugs, fixed.

- A plugin's redisUrl whose password is in the query (``redis://host:6379/0?password=...``, which
  redis-py's ``from_url`` reads as the password) was left in clear in the store, its history and
  ``get`` output: ``secret_paths`` only looked for a password in the URL's userinfo.
- With ``--workers N`` the worker processes run ``--targets gateway`` only, so no worker follows
  Api resources: an Api's routes (sealed plugin secrets or not) answer 404 on every connection the
  kernel gives a worker (older than 44c1380, found reviewing it).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.cache_distributed.conftest import redis_servers  # noqa: F401 (fixture)
from integration.cache_distributed.redis_procs import RedisServers
from integration.gateway import conftest as gateway_fixtures
from integration.gateway import core_fixtures
from integration.gateway.conftest import EchoServer, GatewayHandle, route_doc, upstream_doc
from integration.gateway.core_fixtures import RawClient, get
from integration.gateway.test_core_workers import _children, _owner
from mezzo.config.secrets import PREFIX
from mezzo.resources.service import HISTORY, ResourceService, resource_key
from mezzo.testing.fixtures import free_port, spawn_node, start_node, stop_process, wait_for

upstreams = gateway_fixtures.upstreams
upstream = gateway_fixtures.upstream
origins = core_fixtures.origins

PASSWORD = "query-pass-0123456789"


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


def _limit(url: str) -> dict[str, Any]:
    return {"limit-count": {"count": 2, "window": "60s", "key": "route", "policy": "redis", "redisUrl": url,
                            "degrade": "open"}}


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
        assert [(await http.get("/limited/x")).status_code for _ in range(3)] == [200, 200, 429]


async def _statuses(port: int, path: str, pids: list[int], connections: int = 24) -> dict[int, set[int]]:
    """The statuses each process answered one GET with, over ``connections`` new connections."""
    out: dict[int, set[int]] = {}
    for _ in range(connections):
        client = await RawClient.connect(port)
        try:
            await client.send(get(path))
            status = (await client.response()).status
            owner = _owner(port, client.writer.get_extra_info("sockname")[1], pids)
            if owner is not None:
                out.setdefault(owner, set()).add(status)
        finally:
            client.close()
    return out


async def test_every_gateway_worker_serves_an_apis_routes(tmp_path: Path, origins) -> None:
    (a,) = await origins(1)
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    node = await asyncio.to_thread(spawn_node, data, {"MEZZO_GATEWAY_PORT": str(port)}, ("up", "--workers", "2"))
    document = {"openapi": "3.0.3", "info": {"title": "Shop", "version": "1"},
                "paths": {"/items": {"get": {"operationId": "items", "responses": {"200": {"description": "ok"}}}}}}
    pids: list[int] = []
    try:
        assert node.process is not None
        main = node.process.pid
        workers = await wait_for(lambda: _children(main), timeout=20)
        pids = [main, *workers]
        async with node.client() as sdk:
            await sdk.resources.apply([
                {"apiVersion": "mezzo.dev/v1", "kind": "Upstream", "metadata": {"name": "up"},
                 "spec": {"nodes": [{"host": "127.0.0.1", "port": a.port}]}},
                {"apiVersion": "mezzo.dev/v1", "kind": "Route", "metadata": {"name": "plain"},
                 "spec": {"paths": ["/plain"], "upstream": "up"}},
                {"apiVersion": "mezzo.dev/v1", "kind": "Api", "metadata": {"name": "shop"},
                 "spec": {"document": document, "upstream": "up", "state": "published"}}])

        async def both_ok(path: str) -> bool:
            try:
                seen = await _statuses(port, path, pids)
            except ConnectionError:
                return False
            return len(seen) == 2 and all(statuses == {200} for statuses in seen.values())

        await wait_for(lambda: both_ok("/plain"), timeout=30)  # both processes serve the Route
        try:  # the Api's routes too, in every process (a worker that does not follow Apis answers 404)
            await wait_for(lambda: both_ok("/items"), timeout=10)
        except (TimeoutError, AssertionError):
            pytest.fail(f"an Api's route, status per process: {await _statuses(port, '/items', pids)}")
    finally:
        stop_process(node, signal.SIGTERM)
    for pid in pids[1:]:  # the workers stop with their main process
        await wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2])  # noqa: B023
