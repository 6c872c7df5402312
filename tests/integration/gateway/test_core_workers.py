"""Gateway core, multi-process mode: ``mezzo up --workers 2`` serves the gateway port from two processes
that both follow the resources applied once through the main process's API."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from mezzo.testing.fixtures import free_port, spawn_node, stop_process, wait_for

from . import core_fixtures
from .core_fixtures import RawClient, get

origins = core_fixtures.origins  # fixture


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which process holds the server side of the connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


async def _sample(port: int, pids: list[int], header: str | None = None) -> dict[int, int]:
    """Requests on 24 new connections: how many each process answered (all must be 200)."""
    served: dict[int, int] = {}
    for _ in range(24):
        client = await RawClient.connect(port)
        try:
            await client.send(get("/x"))
            r = await client.response()
            assert r.status == 200, r.body
            if header is not None and r.json()["headers"].get("x-v") != header:
                continue
            owner = _owner(port, client.writer.get_extra_info("sockname")[1], pids)
            if owner is not None:
                served[owner] = served.get(owner, 0) + 1
        finally:
            client.close()
    return served


async def test_two_processes_serve_one_configuration(tmp_path: Path, origins) -> None:
    (a,) = await origins(1)
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    node = await asyncio.to_thread(spawn_node, data, {"MEZZO_GATEWAY_PORT": str(port)}, ("up", "--workers", "2"))
    try:
        assert node.process is not None
        main = node.process.pid
        workers = await wait_for(lambda: _children(main), timeout=20)
        assert len(workers) == 1
        pids = [main, *workers]
        async with node.client() as sdk:
            await sdk.resources.apply([
                {"apiVersion": "mezzo.dev/v1", "kind": "Upstream", "metadata": {"name": "up"},
                 "spec": {"nodes": [{"host": "127.0.0.1", "port": a.port}]}},
                {"apiVersion": "mezzo.dev/v1", "kind": "Route", "metadata": {"name": "r"},
                 "spec": {"paths": ["/*"], "upstream": "up"}}])

            async def both_serve(header: str | None = None) -> bool:
                try:
                    return len(await _sample(port, pids, header)) == 2
                except (AssertionError, ConnectionError):
                    return False  # a process that has not caught up yet answers 404
            await wait_for(both_serve, timeout=30)

            # one more change, applied once: every process picks it up
            await sdk.resources.apply([
                {"apiVersion": "mezzo.dev/v1", "kind": "Route", "metadata": {"name": "r"},
                 "spec": {"paths": ["/*"], "upstream": "up",
                          "plugins": {"proxy-rewrite": {"headers": {"set": {"x-v": "2"}}}}}}])
            await wait_for(lambda: both_serve("2"), timeout=10)
    finally:
        stop_process(node, signal.SIGTERM)
    for pid in pids[1:]:
        await wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2])  # noqa: B023


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
