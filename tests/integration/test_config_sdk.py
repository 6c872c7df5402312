"""``client.config``: the management calls, and ``watch``: pushed changes, typed reads, binding,
callbacks, reconnects that miss nothing, the periodic re-read, and the cache that lets an app start
(and keep running) while Mezzo is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from mezzo import Mezzo, MezzoSync
from mezzo.sdk.configcenter import ConfigChange, ConfigValueError
from mezzo.sdk.errors import Conflict, ConnectError, NotFound
from mezzo.testing.fixtures import RunningNode, free_port, start_node, wait_for

APP, NS = "shop", "application"


async def release(client: Mezzo, values: dict[str, str], namespace: str = NS) -> dict[str, Any]:
    await client.config.set_many(APP, namespace, values)
    return await client.config.publish(APP, namespace)


@pytest.fixture
async def client(node: RunningNode) -> AsyncIterator[Mezzo]:
    async with node.client() as mezzo:
        yield mezzo


async def test_drafts_releases_diff_rollback(client: Mezzo) -> None:
    config = client.config
    first = await config.set(APP, NS, "db.pool", "10")
    await config.set(APP, NS, "db.password", "s3cret", secret=True)
    await config.set(APP, NS, "path/with space", "x")
    draft = await config.items(APP, NS)
    assert draft["items"]["db.password"]["value"] == "******" and draft["items"]["path/with space"]["value"] == "x"
    with pytest.raises(Conflict):
        await config.set(APP, NS, "db.pool", "11", if_match=first)  # the draft moved on since that ETag
    etag = await config.set(APP, NS, "db.pool", "12", if_match=draft["etag"])
    assert int(etag) > int(draft["etag"])

    one = await config.publish(APP, NS, title="initial", message="pool of 12")
    assert (one["id"], one["title"], one["keys"]) == (1, "initial", 3)
    assert await config.get(APP, NS) == {"db.pool": "12", "db.password": "s3cret", "path/with space": "x"}
    assert await config.get(APP, NS, "db.pool") == "12" and await config.get(APP, NS, "nope") is None
    with pytest.raises(Conflict):
        await config.publish(APP, NS)  # nothing changed

    await config.set(APP, NS, "db.pool", "20")
    await config.unset(APP, NS, "path/with space")
    assert (await config.namespace(APP, NS))["pending"] == {"added": [], "changed": ["db.pool"],
                                                           "removed": ["path/with space"]}
    await config.publish(APP, NS)
    diff = await config.diff(APP, NS, 1, 2)
    assert diff["changed"] == ["db.pool"] and diff["removed"] == ["path/with space"]
    assert diff["values"]["db.pool"] == {"from": "12", "to": "20"}
    assert [r["id"] for r in await config.releases(APP, NS)] == [2, 1]
    assert (await config.release(APP, NS, 1))["configurations"]["db.password"] == "******"

    await config.set(APP, NS, "late", "1")
    with pytest.raises(Conflict, match="unpublished"):
        await config.rollback(APP, NS)
    rolled = await config.rollback(APP, NS, to=1, force=True)
    assert (rolled["id"], rolled["kind"], rolled["rolledBackTo"]) == (3, "rollback", 1)
    assert await config.get(APP, NS, "db.pool") == "12"
    await config.set(APP, NS, "again", "1")
    await config.discard(APP, NS)
    assert "again" not in (await config.items(APP, NS))["items"]
    with pytest.raises(NotFound):
        await config.releases(APP, "missing")
    actions = [r["action"] for r in await config.audit(APP, namespace=NS)]
    assert {"config.set", "config.unset", "config.publish", "config.rollback", "config.discard"} <= set(actions)


async def test_namespaces_import_export_permissions(client: Mezzo, tmp_path: Path) -> None:
    config = client.config
    props = tmp_path / "app.properties"
    props.write_text("db.pool = 10\ndb.url: pg://x\n")
    yml = tmp_path / "extra.yaml"
    yml.write_text("cache:\n  ttl: 30\nhosts: [a, b]\n")
    await config.import_file(APP, NS, props)
    await config.import_file(APP, NS, yml, secret_keys=["cache.ttl"])
    await config.publish(APP, NS)
    assert await config.get(APP, NS) == {"db.pool": "10", "db.url": "pg://x", "cache.ttl": "30",
                                         "hosts[0]": "a", "hosts[1]": "b"}
    exported = await config.export(APP, NS)
    assert "db.pool=10\n" in exported and "cache.ttl=30\n" in exported  # the admin token reads secrets

    await config.create_namespace(APP, "app.yaml", format="yaml")
    with pytest.raises(Conflict):
        await config.create_namespace(APP, "app.yaml", format="yaml")
    await config.set(APP, "app.yaml", "content", "db:\n  pool: 5\n")
    await config.publish(APP, "app.yaml")
    assert await config.export(APP, "app.yaml") == "db:\n  pool: 5\n"
    names = {(n["namespace"], n["format"], n["release"]) for n in await config.namespaces(APP)}
    assert names == {(NS, "properties", 1), ("app.yaml", "yaml", 1)}
    assert any(a["app"] == APP for a in await config.apps())

    meta = await config.set_permissions(APP, NS, edit=["alice"], publish=["bob"], require_distinct_publisher=True)
    assert meta["permissions"] == {"edit": ["alice"], "publish": ["bob"], "requireDistinctPublisher": True}
    await config.delete_namespace(APP, "app.yaml")
    assert {n["namespace"] for n in await config.namespaces(APP)} == {NS}


async def test_gray_release_reaches_the_clients_its_rules_pick(client: Mezzo) -> None:
    config = client.config
    await release(client, {"db.pool": "10", "mode": "a"})
    canary = await config.watch(APP, NS, labels={"canary": "true"}, cache=False)
    other = await config.watch(APP, NS, cache=False)
    await config.gray_create(APP, NS)
    await config.gray_set(APP, NS, "db.pool", "20")
    await config.gray_set(APP, NS, "mode", "b")
    await config.gray_unset(APP, NS, "mode")
    await config.gray_rules(APP, NS, [{"labels": {"canary": "true"}}, {"ips": ["10.0.0.0/8"]}])
    gray = await config.gray_publish(APP, NS)
    assert gray["release"]["overrides"] == {"db.pool": "20"} and len(gray["rules"]) == 2
    await wait_for(lambda: canary.get("db.pool") == "20")
    assert canary.release_key == "shop-1-gray1" and other.get("db.pool") == "10"
    assert await config.get(APP, NS, "db.pool", labels={"canary": "true"}) == "20"
    assert await config.get(APP, NS, "db.pool", ip="10.1.2.3") == "20"
    assert (await config.gray_get(APP, NS))["rules"][1]["ips"] == ["10.0.0.0/8"]

    promoted = await config.gray_promote(APP, NS)
    assert promoted["kind"] == "promote"
    await wait_for(lambda: other.get("db.pool") == "20")
    await config.gray_create(APP, NS)
    await config.gray_abandon(APP, NS)
    with pytest.raises(NotFound):
        await config.gray_get(APP, NS)


async def test_watch_pushes_changes_to_callbacks_and_iterators(client: Mezzo, tmp_path: Path) -> None:
    await release(client, {"db.pool": "10", "db.url": "pg://a", "debug": "false"})
    cache = tmp_path / "cache"
    cfg = await client.config.watch(APP, NS, cache_dir=cache)
    assert cfg.all() == {"db.pool": "10", "db.url": "pg://a", "debug": "false"}
    seen: list[ConfigChange] = []
    seen_async: list[ConfigChange] = []

    async def remember(change: ConfigChange) -> None:
        seen_async.append(change)

    cfg.on_change(seen.append)
    cfg.on_change(remember)
    iterated: list[ConfigChange] = []

    async def iterate() -> None:
        async for change in cfg:
            iterated.append(change)

    loop = asyncio.create_task(iterate())
    await client.config.set(APP, NS, "db.pool", "20")
    await client.config.unset(APP, NS, "db.url")
    await client.config.set(APP, NS, "feature.x", "on")
    await client.config.publish(APP, NS)
    await wait_for(lambda: seen and seen_async and iterated)
    [change] = seen
    assert seen_async == [change] and iterated == [change]
    assert (change.added, change.changed, change.removed) == (["feature.x"], ["db.pool"], ["db.url"])
    assert (change.keys["db.pool"].old, change.keys["db.pool"].new) == ("10", "20")
    assert change.keys["db.url"].new is None and change.keys["feature.x"].old is None
    assert change.release_key == "shop-2" and change.revision == cfg.revision
    assert cfg.get("db.pool", 0) == 20

    path = cache / "shop+default+default+application.json"
    cached = json.loads(path.read_text())
    assert cached["configurations"] == cfg.all() and cached["notificationId"] == cfg.revision
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(cache.iterdir()) == [path]  # no temporary file left behind

    await client.config.set(APP, NS, "debug", "true")
    await client.config.publish(APP, NS)
    await wait_for(lambda: len(iterated) == 2)
    await cfg.aclose()
    await asyncio.wait_for(loop, 10)  # closing the view ends the loop
    assert [c.changed for c in iterated] == [["db.pool"], ["debug"]]


async def test_typed_reads(client: Mezzo) -> None:
    await release(client, {"pool": "10", "ratio": "0.5", "on": "Yes", "off": "0", "name": "shop",
                           "hosts": '["a", "b"]', "bad": "ten"})
    cfg = await client.config.watch(APP, NS, cache=False)
    assert cfg.get("pool", 1, int) == 10 and cfg.get("pool", 1) == 10 and cfg.get("pool") == "10"
    assert cfg.get("ratio", 0.0) == 0.5 and cfg.get("name", "x") == "shop"
    assert cfg.get("on", False) is True and cfg.get("off", True) is False
    assert cfg.get("hosts", []) == ["a", "b"]
    assert cfg.get("missing", 7) == 7 and cfg.get("missing") is None and cfg.get("missing", None, int) is None
    with pytest.raises(ConfigValueError, match=r"config key 'bad' is 'ten', which is not a valid int"):
        cfg.get("bad", 0)
    with pytest.raises(ConfigValueError, match="not a valid bool"):
        cfg.get("name", False)
    with pytest.raises(ValueError):  # ConfigValueError is a ValueError
        cfg.get("bad", None, float)


class Db(BaseModel):
    pool: int = 5
    url: str


class Settings(BaseModel):
    db: Db
    debug: bool = False
    hosts: list[str] = []
    timeout: float = Field(1.0, alias="http.timeout")


async def test_bind_to_a_model_once_and_live(client: Mezzo) -> None:
    await release(client, {"db.pool": "10", "db.url": "pg://a", "debug": "yes", "hosts[0]": "a", "hosts[1]": "b",
                           "http.timeout": "2.5", "unrelated": "x"})
    cfg = await client.config.watch(APP, NS, cache=False)
    settings = cfg.bind(Settings)
    assert settings == Settings(db=Db(pool=10, url="pg://a"), debug=True, hosts=["a", "b"], **{"http.timeout": 2.5})
    live = cfg.binding(Settings)
    await release(client, {"db.pool": "20"})
    await wait_for(lambda: live.value.db.pool == 20)
    assert live.error is None and settings.db.pool == 10  # a snapshot stays as it was

    await release(client, {"db.pool": "lots"})
    await wait_for(lambda: cfg.get("db.pool") == "lots")
    assert live.value.db.pool == 20 and live.error is not None  # a change the model rejects is not taken
    with pytest.raises(ValueError, match=r"db\.pool"):
        cfg.bind(Settings)

    await client.config.create_namespace(APP, "app.yaml", format="yaml")
    await client.config.set(APP, "app.yaml", "content", "db:\n  pool: 7\n  url: pg://y\nhosts: [c]\n")
    await client.config.publish(APP, "app.yaml")
    doc = await client.config.watch(APP, "app.yaml", cache=False)
    assert doc.document() == {"db": {"pool": 7, "url": "pg://y"}, "hosts": ["c"]}
    assert doc.get("db.pool", 0) == 7 and doc.get("hosts[0]") == "c"
    assert doc.bind(Settings).db == Db(pool=7, url="pg://y")


async def test_a_missing_namespace_is_not_found_unless_missing_ok(client: Mezzo) -> None:
    with pytest.raises(NotFound):
        await client.config.watch(APP, NS, cache=False)
    cfg = await client.config.watch(APP, NS, cache=False, missing_ok=True)
    assert cfg.all() == {} and cfg.revision == -1
    await release(client, {"a": "1"})
    await wait_for(lambda: cfg.get("a") == "1")
    await client.config.delete_namespace(APP, NS)
    await wait_for(lambda: cfg.all() == {})


class Proxy:
    """A TCP proxy to the node that can drop every connection and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refuse = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_dropped_stream_resumes_without_missing_a_release(node: RunningNode, client: Mezzo) -> None:
    await release(client, {"n": "0"})
    proxy = Proxy(int(node.url.rsplit(":", 1)[1]))
    url = await proxy.start()
    try:
        async with Mezzo(url, node.token, retries=0) as far:
            cfg = await far.config.watch(APP, NS, cache=False, max_backoff=0.2)
            changes: list[ConfigChange] = []
            cfg.on_change(changes.append)
            await wait_for(lambda: cfg.connected)
            proxy.refuse = True
            proxy.cut()
            await wait_for(lambda: not cfg.connected)
            for i in range(1, 4):  # released while the watcher cannot reach the node
                await release(client, {"n": str(i)})
            proxy.refuse = False
            await wait_for(lambda: cfg.get("n") == "3")
            assert [c.keys["n"].new for c in changes] == ["1", "2", "3"]  # each one, in order
            assert [c.release_key for c in changes] == ["shop-2", "shop-3", "shop-4"]
    finally:
        await proxy.stop()


async def test_reconnects_after_a_restart_and_the_cache_covers_the_outage(tmp_path: Path) -> None:
    port = free_port()
    data, cache = tmp_path / "data", tmp_path / "cache"
    node = await start_node(data, api_port=port, drain_timeout=0.1)
    try:
        async with node.client() as admin:
            await release(admin, {"n": "0", "db.pool": "10"})
            first = await admin.config.watch(APP, NS, cache_dir=cache)
            await first.aclose()
        async with Mezzo(node.url, node.token, retries=0) as app_client:
            cfg = await app_client.config.watch(APP, NS, cache_dir=cache, max_backoff=0.2)
            changes: list[ConfigChange] = []
            cfg.on_change(changes.append)
            await wait_for(lambda: cfg.connected)
            await node.node.stop()
            await wait_for(lambda: not cfg.connected)
            assert cfg.get("db.pool", 0) == 10  # keeps serving what it has

            # an app started now still gets its configuration, from the cache; without one it fails
            late = await app_client.config.watch(APP, NS, cache_dir=cache, max_backoff=0.2)
            assert late.from_cache and not late.connected and late.get("n") == "0"
            with pytest.raises(ConnectError):
                await app_client.config.watch(APP, NS, cache_dir=tmp_path / "empty")

            node = await start_node(data, api_port=port, drain_timeout=0.1)
            async with node.client() as admin:
                await release(admin, {"n": "1"})
                await release(admin, {"n": "2"})
                # the value is there before the change callbacks have run: wait for those too
                await wait_for(lambda: cfg.get("n") == "2" and late.get("n") == "2"
                               and bool(changes) and changes[-1].keys["n"].new == "2")
                assert not late.from_cache
                await release(admin, {"n": "3"})
                await wait_for(lambda: cfg.get("n") == "3" and late.get("n") == "3")
            file = cache / "shop+default+default+application.json"  # written a moment after the values
            await wait_for(lambda: json.loads(file.read_text())["configurations"]["n"] == "3")
    finally:
        await node.node.stop()


async def test_the_periodic_read_catches_what_the_stream_does_not_bring(client: Mezzo) -> None:
    await release(client, {"a": "1"})
    cfg = await client.config.watch(APP, NS, cache=False, sync_interval=0.05)
    follow = cfg._tasks[0]
    follow.cancel()  # no stream any more: only the periodic full read is left
    with contextlib.suppress(asyncio.CancelledError):
        await follow
    await release(client, {"a": "2"})
    await wait_for(lambda: cfg.get("a") == "2")


class Pool(BaseModel):
    size: int = Field(alias="db.pool")


async def test_the_sync_client_watches_and_manages(node: RunningNode, client: Mezzo) -> None:
    await release(client, {"db.pool": "10"})

    def use() -> list[str]:
        with MezzoSync(node.url, node.token) as sync:
            cfg = sync.config.watch(APP, NS, cache=False)
            assert cfg.get("db.pool", 0) == 10 and cfg.all() == {"db.pool": "10"}
            changed = threading.Event()
            cfg.on_change(lambda change: changed.set())
            sync.config.set(APP, NS, "db.pool", "20")
            assert sync.config.publish(APP, NS, message="bigger")["id"] == 2
            assert changed.wait(30)
            assert cfg.get("db.pool", 0) == 20 and cfg.bind(Pool).size == 20
            assert [r["message"] for r in sync.config.releases(APP, NS)] == ["bigger", ""]
            return [c["action"] for c in sync.config.audit(APP)]

    actions = await asyncio.to_thread(use)
    assert "config.publish" in actions
