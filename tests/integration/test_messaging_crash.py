"""SIGKILL the node while publishers and consumers run: nothing acknowledged is lost, no ack forgotten."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from mezzo.testing.fixtures import spawn_node, stop_process, wait_for


async def test_sigkill_loses_no_acknowledged_publish_or_ack(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    node = spawn_node(data)
    headers = {"Authorization": f"Bearer {node.token}"}
    published: set[str] = set()
    acked: set[str] = set()
    ack_sent: set[str] = set()  # an ack may be durable even if its reply was cut off by the kill
    stop = asyncio.Event()

    async def publisher(http: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not stop.is_set():
            batch = [{"id": f"w{worker}-{n + i}", "data": n + i, "key": f"k{(n + i) % 7}"} for i in range(5)]
            try:
                r = await http.post("/v1/topics/crash:publish", json={"messages": batch})
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                published.update(m["id"] for m in batch)
            n += 5

    async def consumer(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                r = await http.post("/v1/topics/crash/groups/g:pull", json={"max": 20, "wait": 0.2})
                if r.status_code != 200:
                    await asyncio.sleep(0.01)
                    continue
                messages = r.json()["messages"]
                if messages:
                    ack_sent.update(m["id"] for m in messages)
                    a = await http.post("/v1/topics/crash/groups/g:ack",
                                        json={"receipts": [m["receipt"] for m in messages]})
                    if a.status_code == 200:
                        acked.update(m["id"] for m in messages)
            except httpx.HTTPError:
                return

    async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=10) as http:
        await http.post("/v1/topics/crash:publish", json={"id": "seed", "data": 0})
        published.add("seed")
        tasks = [asyncio.create_task(publisher(http, w)) for w in range(3)] + [asyncio.create_task(consumer(http))]
        await wait_for(lambda: len(published) >= 600 and len(acked) >= 150, timeout=30)
        node.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        node.process.wait()  # type: ignore[union-attr]
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(published) >= 600 and len(acked) >= 150, (len(published), len(acked))

    restarted = spawn_node(data)
    after: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=restarted.url, headers=headers, timeout=10) as http:
            while True:
                r = await http.post("/v1/topics/crash/groups/g:pull", json={"max": 500, "wait": 1})
                messages = r.json()["messages"]
                if not messages:
                    break
                after += [m["id"] for m in messages]
                await http.post("/v1/topics/crash/groups/g:ack", json={"receipts": [m["receipt"] for m in messages]})
    finally:
        assert stop_process(restarted) == 0
    missing = published - ack_sent - set(after)
    assert not missing, f"{len(missing)} acknowledged publishes lost, e.g. {sorted(missing)[:5]}"
    redelivered = acked & set(after)
    assert not redelivered, f"{len(redelivered)} acked messages came back, e.g. {sorted(redelivered)[:5]}"
