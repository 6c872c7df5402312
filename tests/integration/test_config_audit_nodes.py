"""Audit of the config center across nodes, restarts and processes: a client's gray percentage side
is the same in another process (sticky), secrets rotate with keys taken from the key file, and the
event stream carries every release across nodes sharing a PostgreSQL store."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
from pathlib import Path

import httpx

from conformance.config.test_push import events, publish
from mezzo.testing.fixtures import (
    ADMIN,
    RunningNode,
    spawn_node,
    start_node,
    stop_process,
    wait_for,
)

APP = "/v1/config/apps/shop/envs/default/clusters/default/namespaces/application"
CLIENTS = [f"pod-{i}" for i in range(40)]


def _http(node: RunningNode) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}, timeout=30)


async def _sides(http: httpx.AsyncClient) -> dict[str, str]:
    return {c: (await http.get(f"{APP}/config", params={"clientId": c})).json()["configurations"]["timeout"]
            for c in CLIENTS}


async def test_a_clients_percentage_side_is_the_same_in_another_process(tmp_path: Path) -> None:
    """Sticky means per client id, not per process: a hash that changed with the process (Python's
    ``hash()``) would move clients between sides whenever they reach another node or a restarted one."""
    data = tmp_path / "data"
    first = await start_node(data)
    try:
        async with _http(first) as http:
            await http.put(f"{APP}/items/timeout", json={"value": "1s"})
            await http.post(f"{APP}:publish", json={})
            await http.put(f"{APP}/gray")
            await http.put(f"{APP}/gray/items/timeout", json={"value": "5s"})
            await http.put(f"{APP}/gray/rules", json={"rules": [{"percentage": 50}]})
            await http.post(f"{APP}/gray:publish")
            before = await _sides(http)
            assert before == await _sides(http)  # the same answer every time
    finally:
        await first.node.stop()
    assert set(before.values()) == {"1s", "5s"}  # 40 clients at 50%: both sides have some
    other = await asyncio.to_thread(spawn_node, data, {"MEZZO_ADMIN_TOKEN": ADMIN, "PYTHONHASHSEED": "random"})
    try:
        async with _http(other) as http:
            assert await _sides(http) == before
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(stop_process, other, signal.SIGKILL)


async def test_secrets_rotate_with_keys_from_the_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = await start_node(data)
    try:
        async with _http(node) as http:
            await http.put(f"{APP}/items/token", json={"value": "t0ps3cret", "secret": True})
            await http.post(f"{APP}:publish", json={})
    finally:
        await node.node.stop()
    key_file = data / "secret.key"  # generated on first start
    old = key_file.read_text().strip()
    new = base64.b64encode(os.urandom(32)).decode()
    key_file.write_text(f"# the first key encrypts, every key decrypts\n{new}\n{old}\n")
    node = await start_node(data)
    try:
        async with _http(node) as http:
            r = await http.post("/v1/config:rotate-keys")
            assert r.status_code == 200 and r.json()["reencrypted"] == 2, r.text  # the draft and the release
    finally:
        await node.node.stop()
    key_file.write_text(f"{new}\n")  # the old key is gone
    node = await start_node(data)
    try:
        async with _http(node) as http:
            assert (await http.get(f"{APP}/config")).json()["configurations"]["token"] == "t0ps3cret"
            assert (await http.get(f"{APP}:export", params={"draft": True})).text == "token=t0ps3cret\n"
    finally:
        await node.node.stop()


async def test_streams_on_another_node_get_every_release_and_resume_there(postgres_url: str, tmp_path: Path) -> None:
    """Multi-node push over the event stream (the existing test covers long polls): releases made on
    one node reach a stream on the other in order, and a client that reconnects to the other node
    with the id it got from the first one is replayed what it missed."""
    one = await start_node(tmp_path / "one", store=postgres_url)
    two = await start_node(tmp_path / "two", store=postgres_url)
    params = {"app": "shop", "namespace": "application"}
    try:
        async with _http(one) as a, _http(two) as b:
            await publish(a, "n", "1")

            async def seen_on_two() -> bool:
                return (await b.get(f"{APP}/config")).status_code == 200

            await wait_for(seen_on_two, timeout=30)
            stream = events(b, params)
            try:
                first = await asyncio.wait_for(anext(stream), 30)
                for value in ("2", "3"):
                    await publish(a, "n", value)
                live = [await asyncio.wait_for(anext(stream), 30) for _ in range(2)]
            finally:
                await stream.aclose()
            assert [e["data"]["configurations"]["n"] for e in [first, *live]] == ["1", "2", "3"]
            assert first["id"] < live[0]["id"] < live[1]["id"]
            for value in ("4", "5"):  # released while the client is away; it comes back to node one
                await publish(b, "n", value)
            again = events(a, params, {"Last-Event-ID": str(live[1]["id"])})
            try:
                replayed = [await asyncio.wait_for(anext(again), 30) for _ in range(2)]
            finally:
                await again.aclose()
            assert [e["data"]["configurations"]["n"] for e in replayed] == ["4", "5"]
            assert all("resync" not in e["data"] for e in replayed)
    finally:
        await two.node.stop()
        await one.node.stop()
