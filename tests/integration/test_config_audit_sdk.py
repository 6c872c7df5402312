"""Audit of ``client.config.watch`` against the issue: the ``env=`` and ``cluster=`` it names are the
ones it follows (with the default-cluster fallback), and its cache file is kept per env and cluster."""

from __future__ import annotations

import json
from pathlib import Path

from integration.test_config_sdk import client  # noqa: F401  (the client fixture)
from mezzo import Mezzo
from mezzo.testing.fixtures import wait_for

APP, NS = "shop", "application"


async def test_watch_follows_the_env_and_cluster_it_names(client: Mezzo, tmp_path: Path) -> None:  # noqa: F811
    config = client.config

    async def release(value: str, **where: str) -> None:
        await config.set(APP, NS, "mode", value, **where)
        await config.publish(APP, NS, **where)

    await release("default-env")
    await release("prod", env="prod")
    cache = tmp_path / "cache"
    cfg = await config.watch(APP, NS, env="prod", cluster="east", cache_dir=cache)
    assert cfg.get("mode") == "prod"  # no release in east yet: prod's default cluster
    await release("prod-east", env="prod", cluster="east")
    await wait_for(lambda: cfg.get("mode") == "prod-east")
    await release("default-env-2")  # another environment: never seen here
    await release("prod-2", env="prod")  # the default cluster of prod: east has its own release now
    await config.set(APP, NS, "marker", "1", env="prod", cluster="east")
    await config.publish(APP, NS, env="prod", cluster="east")
    await wait_for(lambda: cfg.get("marker") == "1")
    assert cfg.get("mode") == "prod-east"
    file = cache / "shop+prod+east+application.json"
    # the values are in place a moment before the cache file is written: wait for the file too
    await wait_for(lambda: file.exists() and '"marker"' in file.read_text())
    cached = json.loads(file.read_text())
    assert (cached["env"], cached["cluster"], cached["configurations"]) == ("prod", "east", cfg.all())
    assert sorted(p.name for p in cache.iterdir()) == ["shop+prod+east+application.json"]
    await cfg.aclose()
