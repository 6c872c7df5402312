"""Audit of issue 2 (foundation), storage: the store module's compaction, schema migrations, the
`follow` helper's recovery after compaction (every engine), and SQLite's WAL and group commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from mezzo.storage import open_store, postgres, sqlite
from mezzo.storage.kv import CompactedError, Compare, ConflictError, Event, KVStore, Put
from mezzo.storage.module import StoreModule
from mezzo.storage.sqlite import SQLiteStore
from mezzo.storage.watch import follow
from mezzo.testing.fixtures import wait_for

KEEP = 100  # the least MEZZO_STORE_HISTORY allows


async def test_the_store_module_keeps_the_configured_history_and_no_more(store: KVStore) -> None:
    module = StoreModule(SimpleNamespace(settings=SimpleNamespace(store_history=KEEP)))  # type: ignore[arg-type]
    module.store = store
    for i in range(KEEP + 20):
        await store.txn([Put(f"hist/{i % 7}", b"%d" % i)])
    current, _ = await store.revision()
    await module.compact_once()
    assert await store.revision() == (current, current - KEEP)
    with pytest.raises(CompactedError):
        await store.events(current - KEEP, "hist/")
    assert len(await store.events(current - KEEP + 1, "hist/")) == KEEP  # the last KEEP are all there
    assert len((await store.range("hist/")).items) == 7  # current values stay
    await module.compact_once()  # nothing new: nothing more goes
    assert (await store.revision())[1] == current - KEEP


async def test_follow_recovers_when_the_reload_after_compaction_fails(store: KVStore) -> None:
    """`follow` (the config center's and the registry's view) let an error of the reload after a
    compaction escape: the view stopped following the store for good."""
    view: dict[str, bytes] = {}
    revision = (await store.revision())[0]
    reloads: list[str] = []

    async def reload() -> None:
        nonlocal revision
        if not reloads:
            reloads.append("failed")
            raise ConnectionResetError("store connection lost")
        reloads.append("ok")
        snapshot = await store.range("view/")
        view.clear()
        view.update({kv.key: kv.value for kv in snapshot.items})
        revision = snapshot.revision

    def apply(event: Event) -> None:
        nonlocal revision
        view[event.key] = event.value or b""
        revision = event.revision

    await store.txn([Put("view/a", b"1")])  # missed: compacted before the view watches
    await store.txn([Put("other", b"x")])
    await store.compact((await store.revision())[0])
    task = asyncio.create_task(follow(store, "view/", lambda: revision + 1, apply, reload, "audit"))
    try:
        await wait_for(lambda: reloads == ["failed", "ok"] or task.done())
        await store.txn([Put("view/b", b"2")])
        await wait_for(lambda: "view/b" in view or task.done())
        assert not task.done(), task.exception()
        assert view == {"view/a": b"1", "view/b": b"2"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_new_migration_is_applied_once_and_keeps_the_data(store: KVStore, monkeypatch: pytest.MonkeyPatch,
                                                                  store_url: str) -> None:
    engine = sqlite if isinstance(store, SQLiteStore) else postgres
    await store.txn([Put("kept", b"v")])
    await store.close()
    later = [*engine.MIGRATIONS, (99, "CREATE TABLE audit_added (x INTEGER)")]  # fails if run twice
    monkeypatch.setattr(engine, "MIGRATIONS", later)
    for _ in range(2):  # the first open migrates, the second finds nothing to do
        again = open_store(store_url)
        await again.open()
        try:
            assert (await again.get("kept")).value == b"v"  # type: ignore[union-attr]
            assert await applied_versions(again) == [v for v, _ in later]
        finally:
            await again.close()
    await store.open()  # for the fixture's close


async def applied_versions(store: Any) -> list[int]:
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    async with store._pool.acquire() as conn:
        return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]


# SQLite ---------------------------------------------------------------------------------------------


async def test_sqlite_runs_in_wal_mode(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.txn([Put("k", b"v")])
    with sqlite3.connect(sqlite_store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_commits_what_queued_meanwhile_together_each_with_its_own_revision(
        sqlite_store: SQLiteStore) -> None:
    """One writer thread: transactions that arrive while a commit runs go in the next one, and a
    failed compare among them fails only its own transaction."""
    store = sqlite_store
    gate, batches = threading.Event(), []
    commit = store._commit

    def held_commit(conn: sqlite3.Connection, batch: list[Any]) -> None:
        batches.append(len(batch))
        if len(batches) == 1:
            gate.wait(30)  # the first commit is slow: the others queue behind it
        commit(conn, batch)

    store._commit = held_commit  # type: ignore[method-assign]
    first = asyncio.create_task(store.txn([Put("g/first", b"v")]))
    await wait_for(lambda: batches)
    queued = [asyncio.create_task(store.txn([Put(f"g/{i}", b"v")])) for i in range(20)]
    bad = asyncio.create_task(store.txn([Put("g/bad", b"v")], [Compare("g/first", 12345)]))
    await wait_for(lambda: store._queue.qsize() == 21)
    gate.set()
    results = await asyncio.gather(first, *queued)
    with pytest.raises(ConflictError):
        await bad
    assert batches == [1, 21]
    revisions = [r.revision for r in results]
    assert revisions == list(range(revisions[0], revisions[0] + 21))
    assert await store.get("g/bad") is None
