"""Two nodes on one PostgreSQL store: a change applied on one reaches the other through watch."""

from __future__ import annotations

from pathlib import Path

from mezzo.node.auth import TokenService
from mezzo.resilience.policies import PolicyRegistry
from mezzo.testing.fixtures import FREE_PORTS, start_node, wait_for

MANIFEST = """\
apiVersion: mezzo.dev/v1
kind: Resiliency
metadata: {name: shared}
spec:
  policies: {timeouts: {general: 2s}}
  targets: {upstreams: {shop: {timeout: general}}}
"""


async def test_change_on_one_node_reaches_the_other(postgres_url: str, tmp_path: Path) -> None:
    first = await start_node(tmp_path / "a", store=postgres_url)
    second = await start_node(tmp_path / "b", store=postgres_url)
    try:
        async with first.client() as client:
            applied = await client.resources.apply(MANIFEST)
        assert applied[0].action == "created"
        registry = second.node.service(PolicyRegistry)
        await wait_for(lambda: not registry.policy_for("upstreams", "shop").is_noop)
        async with second.client() as client:
            assert (await client.resources.get("Resiliency", "shared")).metadata.generation == 1
            assert (await client.resources.apply(MANIFEST))[0].action == "unchanged"
            await client.resources.delete("Resiliency", "shared")
        await wait_for(lambda: first.node.service(PolicyRegistry).policy_for("upstreams", "shop").is_noop)
        ready = await first.node.health()
        assert ready["store"].ok and ready["store"].detail == "postgresql"
    finally:
        await second.node.stop()
        await first.node.stop()


async def test_tokens_created_on_one_node_work_on_another(postgres_url: str, tmp_path: Path) -> None:
    first = await start_node(tmp_path / "a", store=postgres_url)
    second = await start_node(tmp_path / "b", store=postgres_url)
    try:
        async with first.client() as admin:
            created = await admin.tokens.create("shared-viewer", "viewer")
        async with second.client(created["token"]) as client:
            tokens = second.node.service(TokenService)
            assert await wait_for(lambda: tokens.authenticate(created["token"]))
            assert await client.resources.list("Resiliency") == []
    finally:
        await second.node.stop()
        await first.node.stop()


async def test_admin_token_is_minted_once_per_store(postgres_url: str, tmp_path: Path) -> None:
    import asyncio

    from mezzo.node.node import Node
    from mezzo.node.settings import Settings

    nodes = [Node(Settings(data_dir=tmp_path / name, **FREE_PORTS, store=postgres_url)) for name in "abc"]
    await asyncio.gather(*(n.start() for n in nodes))
    try:
        minted = [n for n in nodes if n.service(TokenService).generated_token]
        assert len(minted) == 1
        files = list(tmp_path.glob("*/admin.token"))  # noqa: ASYNC240
        assert len(files) == 1 and files[0].read_text().strip() == minted[0].service(TokenService).generated_token
        for node in nodes:  # every node learns of the one admin token through watch
            await wait_for(lambda n=node: [r for r in n.service(TokenService).list() if r.role == "admin"])
            assert len([r for r in node.service(TokenService).list() if r.role == "admin"]) == 1
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))
