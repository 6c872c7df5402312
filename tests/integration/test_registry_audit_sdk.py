"""Audit of the registry's SDK side: a healthy-only watch follows active-check verdicts, an app
whose own startup fails is never registered, and a kept registration renews its lease with plain
heartbeats however the host was spelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mezzo.sdk.registry import registered
from mezzo.telemetry.metrics import Metrics
from mezzo.testing.fixtures import RunningNode, start_node, wait_for


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A registry node (with the API) on the embedded store."""
    running = await start_node(tmp_path / "data", targets=["registry", "api"])
    try:
        yield running
    finally:
        await running.node.stop()


class Health:
    """A TCP port that answers every request with ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % self.status)
            await writer.drain()
        writer.close()


async def test_a_healthy_watch_follows_the_check(reg: RunningNode) -> None:
    health = Health()
    port = await health.start()
    try:
        async with reg.client() as client:
            stream = client.registry.watch("web", healthy=True, wait=30)
            assert await asyncio.wait_for(anext(stream), 30) == []
            await client.registry.register("web", id="w1", host="127.0.0.1", port=port, check={
                "http": "/health", "interval": "100ms", "timeout": "1s", "failures": 1, "successes": 1})
            seen = [[i.id for i in await asyncio.wait_for(anext(stream), 30)]]
            while seen[-1] != ["w1"]:  # registered critical (an event may show it not yet healthy), then passing
                seen.append([i.id for i in await asyncio.wait_for(anext(stream), 30)])
            health.status = 503
            assert [i.id for i in await asyncio.wait_for(anext(stream), 30)] == []
            health.status = 200
            [back] = await asyncio.wait_for(anext(stream), 30)
            assert back.id == "w1" and back.passing
            await stream.aclose()
    finally:
        assert health.server is not None
        health.server.close()


async def test_an_app_whose_startup_fails_is_not_registered(reg: RunningNode) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with reg.client() as client:
        wrapped = registered(app, service="shop", host="127.0.0.1", port=8125, ttl=5, client=client)
        task = asyncio.create_task(wrapped({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        message = await asyncio.wait_for(outbox.get(), 30)
        await asyncio.wait_for(task, 30)
        assert message == {"type": "lifespan.startup.failed", "message": "no database"}
        assert await client.registry.instances("shop") == []


def _heartbeats(reg: RunningNode, outcome: str) -> float:
    metrics = reg.node.service(Metrics)
    labels = {"namespace": "default", "service": "orders", "outcome": outcome}
    return metrics.registry.get_sample_value("mezzo_registry_heartbeats_total", labels) or 0.0


async def test_a_registration_heartbeats_the_id_the_registry_gave(reg: RunningNode) -> None:
    async with reg.client() as client:
        async with client.registry.registration("orders", host="LocalHost", port=7000, ttl=1) as registration:
            assert registration.instance is not None and registration.instance.id == "localhost:7000"
            await wait_for(lambda: _heartbeats(reg, "renewed") + _heartbeats(reg, "unknown") >= 3, timeout=15)
            assert _heartbeats(reg, "unknown") == 0
        assert await client.registry.instances("orders") == []
