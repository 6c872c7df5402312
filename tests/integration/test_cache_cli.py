"""``mezzo cache`` against a running node."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import pytest

from mezzo.testing.fixtures import RunningNode

# each test starts a dozen CLI processes (about 1 s each to import, far more on a loaded machine)
pytestmark = pytest.mark.timeout(360)


async def mezzo(node: RunningNode, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
    env = {**os.environ, "MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "mezzo", "cache", *args, env=env,
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate(stdin)
    return process.returncode or 0, output.decode()


async def test_keys_values_tags_and_reports(node: RunningNode) -> None:
    assert await mezzo(node, "set", "user:1", "ada", "--ttl", "10m", "--tag", "users") == (0, "OK\n")
    assert await mezzo(node, "set", "user:2", "-", "-t", "users", stdin=b"grace") == (0, "OK\n")
    code, text = await mezzo(node, "set", "user:1", "again", "--nx")
    assert code == 1 and "exists" in text
    assert await mezzo(node, "get", "user:2") == (0, "grace\n")
    code, text = await mezzo(node, "get", "nobody")
    assert code == 1 and "no key 'nobody'" in text
    code, text = await mezzo(node, "keys", "user:*")
    assert code == 0 and sorted(text.split()) == ["user:1", "user:2"]

    async with node.client() as client:
        for _ in range(200):
            await client.cache.get("user:1")
    code, text = await mezzo(node, "stats")
    assert code == 0 and "HIT RATIO" in text and "default" in text
    code, text = await mezzo(node, "stats", "-n", "default", "-o", "json")
    stats = orjson.loads(text)
    assert code == 0 and stats["keys"] == 2 and stats["hits"] >= 201
    code, text = await mezzo(node, "hotkeys", "-o", "json")
    report = orjson.loads(text)
    assert code == 0 and report["hot"][0]["key"] == "user:1"
    code, text = await mezzo(node, "hotkeys", "--limit", "3")
    assert code == 0 and "hot keys of default" in text and "user:1" in text and "big keys" in text

    assert await mezzo(node, "del", "--tag", "users") == (0, "2\n")
    assert await mezzo(node, "del", "user:1", "user:2") == (0, "0\n")


async def test_nodes_and_rebalance_speak_the_servers_answer(node: RunningNode) -> None:
    assert (await mezzo(node, "set", "k", "v"))[0] == 0
    code, text = await mezzo(node, "nodes")
    assert code == 0 and "backend embedded" in text and "rebalance: none" in text
    code, text = await mezzo(node, "rebalance")
    assert code == 1 and "409" in text and "embedded" in text
    code, text = await mezzo(node, "nodes", "-n", "no-such-namespace")
    assert code == 1 and "404" in text and "no-such-namespace" in text
    code, text = await mezzo(node, "hotkeys", "--limit", "0")
    assert code == 1 and "limit" in text
