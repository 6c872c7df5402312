"""Several registry nodes on one PostgreSQL: one registry, whichever node a client talks to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mezzo.registry.members import Membership
from mezzo.registry.view import RegistryView
from mezzo.testing.fixtures import RunningNode, wait_for

from .conftest import SVC, HealthServer, audit, client_for, ids, listed, register, registry_node

FAST = {"interval": "100ms", "timeout": "1s", "failures": 1, "successes": 1}


@pytest.fixture
async def pair(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[RunningNode, RunningNode]]:
    one = await registry_node(tmp_path / "one", postgres_url)
    two = await registry_node(tmp_path / "two", postgres_url)
    try:
        yield one, two
    finally:
        await two.node.stop()
        await one.node.stop()


async def test_nodes_see_each_others_registrations(pair: tuple[RunningNode, RunningNode]) -> None:
    one, two = pair
    async with client_for(one) as a, client_for(two) as b:
        await register(a, "orders", id="a1", host="h", port=1, ttl="1m")
        await wait_for(lambda: _has(b, "orders", "a1"))
        r = await b.post(f"{SVC}/orders/instances/a1:heartbeat")  # any node renews
        assert r.status_code == 200
        await register(b, "orders", id="b1", host="h", port=2)
        await wait_for(lambda: _has(a, "orders", "b1"))

        index = (await listed(b, "orders"))["index"]
        waiting = asyncio.create_task(listed(b, "orders", index=index, wait="30s"))  # parked on node two
        assert (await a.delete(f"{SVC}/orders/instances/a1")).status_code == 204  # changed on node one
        assert [i["id"] for i in (await asyncio.wait_for(waiting, 30))["instances"]] == ["b1"]
        assert (await b.post(f"{SVC}/orders/instances/a1:heartbeat")).status_code == 404


async def test_both_nodes_reap_and_one_removal_is_recorded(pair: tuple[RunningNode, RunningNode]) -> None:
    one, two = pair
    async with client_for(one) as a, client_for(two) as b:
        for n in range(6):  # owners spread over both nodes
            await register(a, "orders", id=f"i{n}", host="h", port=n + 1, ttl="1s")
        await register(b, "orders", id="stays", host="h", port=99)
        await wait_for(lambda: _only(a, "orders", ["stays"]), timeout=20)
        await wait_for(lambda: _only(b, "orders", ["stays"]), timeout=20)
        expired = sorted(x["name"] for x in await audit(a, "registry.expire"))
        assert expired == [f"orders/i{n}" for n in range(6)]  # each removed exactly once


async def test_members_share_the_checks(pair: tuple[RunningNode, RunningNode], health_server: HealthServer) -> None:
    one, two = pair
    members = [n.node.service(Membership) for n in pair]
    await wait_for(lambda: all(len(m.live()) == 2 for m in members))
    async with client_for(one) as a, client_for(two) as b:
        listed_members = (await a.get("/v1/registry/members")).json()
        assert {m["id"] for m in listed_members["items"]} == {m.node_id for m in members}
        for n in range(6):
            await register(a, "web", id=f"w{n}", host="127.0.0.1", port=health_server.port,
                           check={"http": "/health", **FAST})
        await wait_for(lambda: _healthy(b, "web", 6), timeout=20)
        owners = {members[0].owner(f"default/web/w{n}") for n in range(6)}
        assert owners <= {m.node_id for m in members}
        health_server.status = 503
        await wait_for(lambda: _healthy(a, "web", 0), timeout=20)
        await wait_for(lambda: _healthy(b, "web", 0), timeout=20)
        views = [n.node.service(RegistryView) for n in pair]
        assert all(len(v.instances("default", "web", healthy_only=False)) == 6 for v in views)


async def test_a_stopped_node_hands_its_checks_over(pair: tuple[RunningNode, RunningNode],
                                                    health_server: HealthServer) -> None:
    one, two = pair
    first, second = (n.node.service(Membership) for n in pair)
    await wait_for(lambda: len(second.live()) == 2)
    async with client_for(two) as b:
        for n in range(4):
            await register(b, "web", id=f"w{n}", host="127.0.0.1", port=health_server.port,
                           check={"http": "/health", **FAST})
        await wait_for(lambda: _healthy(b, "web", 4), timeout=20)
        await one.node.stop()  # leaves cleanly: its checks move to node two at once
        await wait_for(lambda: second.live() == [second.node_id])
        health_server.status = 503
        await wait_for(lambda: _healthy(b, "web", 0), timeout=20)
        assert first.node_id not in second.live()


async def _has(http: httpx.AsyncClient, service: str, instance: str) -> bool:
    return instance in await ids(http, service)


async def _only(http: httpx.AsyncClient, service: str, wanted: list[str]) -> bool:
    return await ids(http, service) == wanted


async def _healthy(http: httpx.AsyncClient, service: str, count: int) -> bool:
    return len(await ids(http, service, healthy="true")) == count
