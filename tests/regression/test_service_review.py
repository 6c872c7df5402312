"""ResourceService/SDK bugs found in review: each test fails on the current code."""

from __future__ import annotations

from typing import Any

from mezzo.resources.catalog import KindCatalog
from mezzo.resources.manifests import parse_yaml
from mezzo.resources.service import HISTORY, ResourceService
from mezzo.sdk.resources import ResourcesClient
from mezzo.storage.kv import KVStore
from mezzo.testing.fixtures import RunningNode

DOC = """\
apiVersion: mezzo.dev/v1
kind: Resiliency
metadata: {{name: shop}}
spec:
  policies: {{timeouts: {{general: {t}}}}}
"""


async def test_recreate_race_does_not_overwrite_history(sqlite_store: KVStore) -> None:
    """apply() of an absent resource picks generation = last history entry + 1, but only
    compares the resource key (mod_rev 0). If another writer creates *and deletes* it
    meanwhile (ABA), the compare still holds and the txn overwrites that writer's history
    entry for the same generation: history silently loses a version."""
    from mezzo.node.graph import all_kinds

    svc = ResourceService(sqlite_store, KindCatalog(all_kinds()))
    other = ResourceService(sqlite_store, KindCatalog(all_kinds()))
    mine = svc.validate(parse_yaml(DOC.format(t="1s")))
    theirs = other.validate(parse_yaml(DOC.format(t="2s")))

    real_range = sqlite_store.range
    raced = False

    async def racing_range(prefix: str, **kw: Any):  # type: ignore[no-untyped-def]
        nonlocal raced
        result = await real_range(prefix, **kw)
        if prefix.startswith(HISTORY) and not raced:
            raced = True  # another node creates and deletes the same resource right now
            await other.apply(theirs, "bob")
            await other.delete("Resiliency", "default", "shop", "bob")
        return result

    sqlite_store.range = racing_range  # type: ignore[method-assign]
    try:
        await svc.apply(mine, "alice")
    finally:
        sqlite_store.range = real_range  # type: ignore[method-assign]
    history = await svc.history("Resiliency", "default", "shop")
    assert [(h.generation, h.action, h.by) for h in history] == [
        (1, "created", "bob"), (2, "deleted", "bob"), (3, "created", "alice")
    ]


async def test_sdk_watch_does_not_skip_rest_of_a_revision_on_reconnect(node: RunningNode) -> None:
    """ResourcesClient.watch sets start = event.revision + 1 after *each* event; one apply of
    several documents is one revision, so a stream that drops after the first event of that
    revision resumes past the others and they are never delivered."""
    two = "\n---\n".join(DOC.replace("name: shop", f"name: {n}").format(t="1s") for n in ("a", "b"))
    real_stream = ResourcesClient.stream
    calls = 0

    async def flaky_stream(self, kind, namespace=None, from_revision=None, **resume):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        async for event in real_stream(self, kind, namespace, from_revision, **resume):
            yield event
            if calls == 1:
                return  # connection dropped after the first event

    async with node.client() as client:
        ResourcesClient.stream = flaky_stream  # type: ignore[method-assign]
        try:
            watch = client.resources.watch("Resiliency")
            # initial list is empty; then apply both in one transaction
            import asyncio

            async def collect() -> list[str]:
                names: list[str] = []
                async for event in watch:
                    names.append(event.resource.metadata.name)
                    if len(names) == 2:
                        return names
                return names

            task = asyncio.create_task(collect())
            await asyncio.sleep(0.5)
            await client.resources.apply(two)
            done, _ = await asyncio.wait({task}, timeout=5)
            if not done:
                task.cancel()
            assert done, "the second resource of the revision was never delivered"
            names = task.result()
            assert sorted(names) == ["a", "b"]
        finally:
            ResourcesClient.stream = real_stream  # type: ignore[method-assign]
