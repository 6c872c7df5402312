"""Service registry conformance: every test runs on a node over SQLite and over PostgreSQL.

Nodes run the ``registry`` target alone (with the API), as a scaled-out registry node would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.testing.fixtures import RunningNode, start_node

TARGETS = ["registry", "api"]
SVC = "/v1/registry/services"


async def registry_node(data_dir: Path, store: str) -> RunningNode:
    return await start_node(data_dir, store=store, targets=TARGETS)


@pytest.fixture
async def reg(store_url: str, tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await registry_node(tmp_path / "data", store_url)
    try:
        yield running
    finally:
        await running.node.stop()


def client_for(running: RunningNode, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {token or running.token}"},
                             timeout=30)


@pytest.fixture
async def http(reg: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(reg) as client:
        yield client


@pytest.fixture
def login(reg: RunningNode) -> Callable[..., Awaitable[httpx.AsyncClient]]:
    """``await login(name, role, namespaces)``: an HTTP client with a new token."""
    async def make(name: str, role: str, namespaces: list[str] | None = None) -> httpx.AsyncClient:
        async with reg.client() as admin:
            token = (await admin.tokens.create(name, role, namespaces))["token"]
        return client_for(reg, token)

    return make


async def register(http: httpx.AsyncClient, service: str, namespace: str = "default", expect: int | None = None,
                   **body: Any) -> dict[str, Any]:
    r = await http.put(f"{SVC}/{service}/instances", json=body, params={"namespace": namespace})
    assert r.status_code in ((expect,) if expect else (200, 201)), r.text
    return r.json()  # type: ignore[no-any-return]


async def listed(http: httpx.AsyncClient, service: str, **params: Any) -> dict[str, Any]:
    r = await http.get(f"{SVC}/{service}/instances", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["X-Mezzo-Index"] == str(r.json()["index"])
    return r.json()  # type: ignore[no-any-return]


async def ids(http: httpx.AsyncClient, service: str, **params: Any) -> list[str]:
    return [i["id"] for i in (await listed(http, service, **params))["instances"]]


async def audit(http: httpx.AsyncClient, action: str | None = None) -> list[dict[str, Any]]:
    r = await http.get("/v1/audit", params={"kind": "ServiceInstance"})
    assert r.status_code == 200, r.text
    return [a for a in r.json()["items"] if action is None or a["action"] == action]


class HealthServer:
    """A tiny HTTP server whose answer the test sets, counting the probes it gets."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> HealthServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % self.status)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def health_server() -> AsyncIterator[HealthServer]:
    server = await HealthServer().start()
    try:
        yield server
    finally:
        await server.close()
