"""TTLs: lapsed instances go, renewed ones stay, expiry survives restarts and crashed clients."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import httpx

from mezzo.jsonutil import dumps
from mezzo.registry.service import INSTANCES, LEASES
from mezzo.storage import open_store
from mezzo.storage.kv import KVStore, Put
from mezzo.testing.fixtures import RunningNode, wait_for

from .conftest import SVC, audit, client_for, ids, listed, register, registry_node


def _at(text: object) -> datetime:
    return datetime.fromisoformat(str(text))


async def gone(http: httpx.AsyncClient, service: str, instance: str) -> bool:
    return instance not in await ids(http, service)


async def test_lapsed_instance_is_removed_and_one_without_ttl_stays(http: httpx.AsyncClient) -> None:
    await register(http, "orders", id="short", host="h", port=1, ttl="1s")
    await register(http, "orders", id="forever", host="h", port=2)
    assert await ids(http, "orders") == ["forever", "short"]
    await wait_for(lambda: gone(http, "orders", "short"), timeout=15)
    assert await ids(http, "orders") == ["forever"]
    [record] = await audit(http, "registry.expire")
    assert record["name"] == "orders/short" and record["user"] == "mezzo" and record["detail"]["reason"] == "ttl"
    r = await http.post(f"{SVC}/orders/instances/short:heartbeat")
    assert r.status_code == 404  # the client learns it must register again
    await register(http, "orders", expect=201, id="short", host="h", port=1, ttl="1s")


async def test_heartbeat_renews_the_lease_and_coalesces_bursts(reg: RunningNode, http: httpx.AsyncClient) -> None:
    first = await register(http, "orders", id="web", host="h", port=1, ttl="5s")
    store = reg.node.service(KVStore)
    written = (await store.get(LEASES + "default/orders/web")).mod_revision  # type: ignore[union-attr]
    instance_revision = (await store.get(INSTANCES + "default/orders/web")).mod_revision  # type: ignore[union-attr]
    index = (await listed(http, "orders"))["index"]

    burst = [(await http.post(f"{SVC}/orders/instances/web:heartbeat")).json()["expiresAt"] for _ in range(5)]
    assert all(b is not None for b in burst)
    # right after a renewal the lease is nearly full: a burst of heartbeats writes nothing
    assert (await store.get(LEASES + "default/orders/web")).mod_revision == written  # type: ignore[union-attr]

    async def renewed() -> bool:
        r = await http.post(f"{SVC}/orders/instances/web:heartbeat")
        return _at(r.json()["expiresAt"]) > _at(first["expiresAt"])

    await wait_for(renewed, timeout=15)
    assert (await store.get(LEASES + "default/orders/web")).mod_revision > written  # type: ignore[union-attr]
    # renewals touch only the lease: the instance, its index and the audit log stay as they were
    assert (await store.get(INSTANCES + "default/orders/web")).mod_revision == instance_revision  # type: ignore[union-attr]
    assert (await listed(http, "orders"))["index"] == index
    assert len(await audit(http)) == 1


async def test_expiry_survives_a_restart(store_url: str, tmp_path: Path) -> None:
    """No node runs while the TTL runs out: the next node to start removes the instance."""
    one = await registry_node(tmp_path / "one", store_url)
    try:
        async with client_for(one) as http:
            await register(http, "orders", id="stale", host="h", port=1, ttl="1h")
            await register(http, "orders", id="fresh", host="h", port=2, ttl="1h")
    finally:
        await one.node.stop()
    store = open_store(store_url)
    await store.open()
    try:  # an hour passes while every node is down
        await store.txn([Put(LEASES + "default/orders/stale", dumps({"expiresAt": time.time() - 1}))])
    finally:
        await store.close()
    two = await registry_node(tmp_path / "two", store_url)
    try:
        async with client_for(two) as http:
            await wait_for(lambda: gone(http, "orders", "stale"), timeout=15)
            assert await ids(http, "orders") == ["fresh"]
    finally:
        await two.node.stop()


CLIENT = textwrap.dedent("""
    import asyncio, sys
    from mezzo import Mezzo

    async def main():
        async with Mezzo() as client:
            async with client.registry.registration("crashy", host="127.0.0.1", port=int(sys.argv[1]), ttl=1):
                print("registered", flush=True)
                await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_a_killed_process_disappears_within_its_ttl(reg: RunningNode, http: httpx.AsyncClient,
                                                          tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "MEZZO_URL": reg.url, "MEZZO_TOKEN": reg.token}
    process = await asyncio.create_subprocess_exec(sys.executable, str(script), "7001", env=env,
                                                   stdout=asyncio.subprocess.DEVNULL)
    try:
        first = await wait_for(lambda: _instance(http, "crashy", "127.0.0.1:7001"), timeout=30)

        async def heartbeats_seen() -> bool:  # the client's heartbeats renew the lease
            now = await _instance(http, "crashy", "127.0.0.1:7001")
            return bool(now) and _at(now["expiresAt"]) > _at(first["expiresAt"])  # type: ignore[index]

        await wait_for(heartbeats_seen, timeout=15)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await wait_for(lambda: gone(http, "crashy", "127.0.0.1:7001"), timeout=15)
        assert [a["name"] for a in await audit(http, "registry.expire")] == ["crashy/127.0.0.1:7001"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _instance(http: httpx.AsyncClient, service: str, instance: str) -> dict[str, object] | None:
    r = await http.get(f"{SVC}/{service}/instances/{instance}")
    return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]
