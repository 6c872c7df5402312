"""Watches on an SQLite file that another process writes too (gateway workers, a CLI on the data dir)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mezzo.storage.kv import Event, Put
from mezzo.storage.sqlite import SQLiteStore
from mezzo.testing.fixtures import wait_for

WRITER = """
import asyncio, sys
from mezzo.storage.kv import Put
from mezzo.storage.sqlite import SQLiteStore

async def main(url: str, count: int) -> None:
    store = SQLiteStore(url)
    await store.open()
    try:
        for i in range(count):
            await store.txn([Put(f"shared/other/{i:03d}", b"o"), Put(f"shared/both/{i:03d}", b"o")])
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_watch_sees_every_write_of_another_process_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kv.db'}"
    store = SQLiteStore(url)
    await store.open()
    count = 40
    try:
        seen: list[Event] = []

        async def take(total: int) -> None:
            async for event in store.watch("shared/", start=1):
                seen.append(event)
                if len(seen) == total:
                    return

        taking = asyncio.create_task(take(3 * count))
        writer = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, url, str(count))
        for i in range(count):  # this process writes meanwhile: both sources interleave
            await store.txn([Put(f"shared/mine/{i:03d}", b"m")])
        assert await asyncio.wait_for(writer.wait(), 60) == 0
        await asyncio.wait_for(taking, 30)
    finally:
        await store.close()
    revisions = [e.revision for e in seen]
    assert revisions == sorted(revisions)
    assert sorted(set(revisions)) == list(range(1, 2 * count + 1))  # gap-free
    theirs = [e.key for e in seen if "/mine/" not in e.key]
    assert theirs == [k for i in range(count) for k in (f"shared/other/{i:03d}", f"shared/both/{i:03d}")]
    assert [e.key for e in seen if "/mine/" in e.key] == [f"shared/mine/{i:03d}" for i in range(count)]


async def test_idle_watch_wakes_for_a_write_by_a_one_shot_process(tmp_path: Path) -> None:
    """Nothing in this process writes: only the change check can wake the watch."""
    url = f"sqlite:///{tmp_path / 'kv.db'}"
    store = SQLiteStore(url)
    await store.open()
    try:
        stream = store.watch("shared/", start=(await store.revision())[0] + 1)
        first = asyncio.create_task(anext(stream))
        writer = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, url, "1")
        assert await asyncio.wait_for(writer.wait(), 60) == 0
        event = await asyncio.wait_for(first, 30)
        assert event.key == "shared/other/000" and event.value == b"o"
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_local_write_leaves_watches_of_other_prefixes_parked(tmp_path: Path) -> None:
    """This process's commits name their keys: a watch of another prefix is not woken to query."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'kv.db'}", poll_interval=3600)  # only writes wake watches
    await store.open()
    queries: dict[str, int] = {}
    events = store.events

    async def counting_events(start: int, prefix: str = "", limit: int = 1000) -> list[Event]:
        queries[prefix] = queries.get(prefix, 0) + 1
        return await events(start, prefix, limit)

    store.events = counting_events  # type: ignore[method-assign]
    try:
        quiet = store.watch("p/quiet/", start=1)
        taking = asyncio.create_task(anext(quiet))
        await wait_for(lambda: queries.get("p/quiet/") == 1)
        busy = store.watch("p/busy/", start=1)
        for i in range(5):
            await store.txn([Put(f"p/busy/{i}", b"v")])
            assert (await asyncio.wait_for(anext(busy), 10)).key == f"p/busy/{i}"
        assert queries["p/quiet/"] == 1
        await store.txn([Put("p/quiet/k", b"v")])
        assert (await asyncio.wait_for(taking, 10)).key == "p/quiet/k"
        await busy.aclose()  # type: ignore[attr-defined]
        await quiet.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
