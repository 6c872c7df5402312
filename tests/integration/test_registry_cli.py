"""``mezzo registry services|instances|deregister`` against a running node."""

from __future__ import annotations

import asyncio

import orjson

from integration.test_tx_cli import mezzo  # the CLI in a subprocess, against the node
from mezzo.testing.fixtures import RunningNode


async def test_services_instances_and_deregister(node: RunningNode) -> None:
    async with node.client() as client:
        await client.registry.register("shop", host="127.0.0.1", port=9101, weight=2, zone="eu-1", version="1.4.0")
        await client.registry.register("shop", host="127.0.0.1", port=9102, zone="eu-2",
                                       check={"tcp": True, "interval": "1s", "timeout": "0.2s"})  # nothing listens
        await client.registry.register("billing", host="10.0.0.7", port=8000, namespace="team-b")

    code, text = await mezzo(node, "registry", "services")
    assert code == 0, text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:]}
    assert text.split()[:4] == ["SERVICE", "INSTANCES", "PASSING", "CRITICAL"] and set(rows) == {"shop"}
    assert rows["shop"][0] == "2"
    code, text = await mezzo(node, "registry", "services", "-n", "team-b", "-o", "json")
    assert code == 0 and [s["name"] for s in orjson.loads(text)] == ["billing"], text

    code, text = await mezzo(node, "registry", "instances", "shop")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].split()[:7] == ["ID", "ADDRESS", "WEIGHT", "ZONE", "VERSION", "STATUS", "SINCE"]
    first = lines[1].split()
    assert first[:6] == ["127.0.0.1:9101", "127.0.0.1:9101", "2", "eu-1", "1.4.0", "passing"], lines

    async def critical() -> bool:
        _, listed = await mezzo(node, "registry", "instances", "shop", "-o", "json")
        return any(i["port"] == 9102 and i["status"] == "critical" for i in orjson.loads(listed))

    for _ in range(100):
        if await critical():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the instance with a failing check never went critical")
    code, text = await mezzo(node, "registry", "instances", "shop", "--healthy", "-o", "json")
    assert code == 0 and [i["port"] for i in orjson.loads(text)] == [9101], text
    code, text = await mezzo(node, "registry", "instances", "shop", "--zone", "eu-2")
    assert code == 0 and "127.0.0.1:9102" in text and "127.0.0.1:9101" not in text, text

    code, text = await mezzo(node, "registry", "deregister", "shop", "127.0.0.1:9101")
    assert code == 0 and "shop/127.0.0.1:9101 deregistered" in text, text
    code, text = await mezzo(node, "registry", "deregister", "shop", "127.0.0.1:9101")  # gone: a clear error
    assert code == 1 and "Error:" in text and "(404)" in text, text
    async with node.client() as client:
        assert [i.port for i in await client.registry.instances("shop")] == [9102]
