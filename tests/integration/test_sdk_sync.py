"""MezzoSync offers the async client's surface, blocking; defaults come from the environment."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from mezzo import Mezzo, MezzoSync
from mezzo.sdk.errors import ConnectError, NotFound
from mezzo.testing.fixtures import RunningNode, spawn_node, stop_process

EXAMPLE = Path(__file__).parents[2] / "examples" / "resiliency.yaml"


def test_sync_client_surface(node_process: RunningNode) -> None:
    with MezzoSync(node_process.url, node_process.token) as client:
        assert client.health() == {"status": "ok"}
        [result] = client.resources.apply(EXAMPLE)
        assert (result.kind, result.action) == ("Resiliency", "created")
        assert client.resources.get("resiliency", "shop").metadata.generation == 1
        assert [r.metadata.name for r in client.resources.list("Resiliency")] == ["shop"]
        with pytest.raises(NotFound):
            client.resources.get("Resiliency", "nope")

        events = client.resources.watch("Resiliency")
        first = next(events)
        assert (first.type, first.resource.metadata.name) == ("ADDED", "shop")
        events.close()


def test_sync_watch_sees_a_change_made_elsewhere(node_process: RunningNode) -> None:
    with MezzoSync(node_process.url, node_process.token) as client:
        stream = client.resources.watch("Resiliency")

        def change() -> None:
            async def go() -> None:
                async with Mezzo(node_process.url, node_process.token) as other:
                    await other.resources.apply(EXAMPLE)

            asyncio.run(go())

        threading.Thread(target=change).start()
        event = next(stream)
        assert event.type == "ADDED" and event.resource.metadata.name == "shop"
        stream.close()


def test_defaults_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    running = spawn_node(data)
    try:
        port = running.url.rsplit(":", 1)[1]
        for name in ("MEZZO_URL", "MEZZO_TOKEN", "MEZZO_ADMIN_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MEZZO_API_PORT", port)
        monkeypatch.setenv("MEZZO_DATA_DIR", str(data))  # the token comes from DATA_DIR/admin.token
        with MezzoSync() as client:
            assert client.url == running.url
            assert client.resources.list("Resiliency") == []
    finally:
        assert stop_process(running) == 0


async def test_unreachable_server_is_a_clear_error() -> None:
    async with Mezzo("http://127.0.0.1:9", "t", retries=0) as client:
        with pytest.raises(ConnectError, match=r"cannot reach Mezzo at http://127\.0\.0\.1:9"):
            await client.health()


def test_sync_messaging_subscriptions_and_transactions(node_process: RunningNode) -> None:
    with MezzoSync(node_process.url, node_process.token) as client:
        client.messaging.publish("sync-orders", {"n": 1})
        with client.messaging.transaction("sync-orders", [{"data": {"n": 2}}]) as tx:
            assert len(tx.message_ids) == 1
        with client.messaging.subscribe("sync-orders", "g", wait=1) as sub:
            got = []
            for message in sub:
                got.append(message.data["n"])
                message.ack()
                if len(got) == 2:
                    break
        assert got == [1, 2]
        again = client.messaging.subscribe("sync-orders", "g").pull(10, 0.1)
        assert again == []
