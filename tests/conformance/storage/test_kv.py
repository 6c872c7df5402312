"""One conformance suite for every KVStore engine (etcd semantics)."""

from __future__ import annotations

import asyncio

import pytest

from mezzo.storage.kv import (
    CompactedError,
    Compare,
    ConflictError,
    Delete,
    EventType,
    KVStore,
    Put,
)
from mezzo.storage.txn import InvalidTxnError
from mezzo.testing.fixtures import wait_for


async def next_events(stream, count: int, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    out = []

    async def take() -> None:
        async for event in stream:
            out.append(event)
            if len(out) == count:
                return

    await asyncio.wait_for(take(), timeout)
    return out


async def test_put_get_revisions(store: KVStore) -> None:
    assert await store.get("a") is None
    r1 = await store.txn([Put("a", b"1")])
    r2 = await store.txn([Put("a", b"2")])
    assert r2.revision == r1.revision + 1
    kv = await store.get("a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
        b"2", r1.revision, r2.revision, 2
    )
    assert r2.prev["a"].value == b"1"


async def test_txn_is_one_revision_and_atomic(store: KVStore) -> None:
    res = await store.txn([Put("x/1", b"a"), Put("x/2", b"b")])
    assert (await store.get("x/1")).mod_revision == res.revision  # type: ignore[union-attr]
    assert (await store.get("x/2")).mod_revision == res.revision  # type: ignore[union-attr]
    with pytest.raises(ConflictError) as info:
        await store.txn([Put("x/1", b"z"), Put("x/3", b"c")], [Compare("x/1", res.revision - 1)])
    assert info.value.key == "x/1"
    assert (await store.get("x/1")).value == b"a"  # type: ignore[union-attr]
    assert await store.get("x/3") is None
    assert (await store.revision())[0] == res.revision


async def test_concurrent_compare_and_set_has_one_winner_per_revision(store: KVStore) -> None:
    """Writers that arrive together (PostgreSQL commits them in one group) still each get their own
    compare: one of those racing on a key wins, the others conflict, the rest are untouched."""
    base = await store.txn([Put("cas/k", b"0")])
    racing = [store.txn([Put("cas/k", b"%d" % i)], [Compare("cas/k", base.revision)]) for i in range(10)]
    others = [store.txn([Put(f"cas/other/{i}", b"v")]) for i in range(10)]
    results = await asyncio.gather(*racing, *others, return_exceptions=True)
    won = [r for r in results[:10] if not isinstance(r, BaseException)]
    lost = [r for r in results[:10] if isinstance(r, ConflictError)]
    assert len(won) == 1 and len(lost) == 9
    assert all(e.key == "cas/k" and e.expected == base.revision for e in lost)
    written = [r.revision for r in [*won, *results[10:]]]  # type: ignore[union-attr]
    assert len(set(written)) == 11  # a revision each
    assert sorted(written) == list(range(base.revision + 1, base.revision + 12))
    assert (await store.get("cas/k")).mod_revision == won[0].revision  # type: ignore[union-attr]
    assert won[0].prev["cas/k"].value == b"0"  # type: ignore[union-attr]


async def test_compare_create_only(store: KVStore) -> None:
    await store.txn([Put("k", b"1")], [Compare("k", 0)])
    with pytest.raises(ConflictError):
        await store.txn([Put("k", b"2")], [Compare("k", 0)])


async def test_delete_and_noop(store: KVStore) -> None:
    r = await store.txn([Put("d", b"1")])
    noop = await store.txn([Delete("missing")])
    assert noop.revision == r.revision
    deleted = await store.txn([Delete("d")])
    assert deleted.revision == r.revision + 1
    assert await store.get("d") is None
    again = await store.txn([Put("d", b"2")])
    kv = await store.get("d")
    assert kv is not None and kv.version == 1 and kv.create_revision == again.revision


async def test_invalid_txn(store: KVStore) -> None:
    with pytest.raises(InvalidTxnError):
        await store.txn([Put("a", b"1"), Delete("a")])
    with pytest.raises(InvalidTxnError):
        await store.txn([Put("", b"1")])


async def test_range_prefix_order_and_paging(store: KVStore) -> None:
    await store.txn([Put(f"p/{i:02d}", str(i).encode()) for i in range(7)] + [Put("q/0", b"x"), Put("p", b"root")])
    page = await store.range("p/", limit=3)
    assert [kv.key for kv in page.items] == ["p/00", "p/01", "p/02"] and page.more
    page2 = await store.range("p/", start_after="p/02", limit=10)
    assert [kv.key for kv in page2.items] == ["p/03", "p/04", "p/05", "p/06"] and not page2.more
    everything = await store.range("")
    assert len(everything.items) == 9
    assert everything.revision == (await store.revision())[0]


async def test_unicode_and_binary(store: KVStore) -> None:
    await store.txn([Put("ключ/ü", bytes(range(256)))])
    assert (await store.get("ключ/ü")).value == bytes(range(256))  # type: ignore[union-attr]
    assert [kv.key for kv in (await store.range("ключ/")).items] == ["ключ/ü"]


async def test_watch_from_revision_is_ordered_and_gap_free(store: KVStore) -> None:
    first = await store.txn([Put("w/a", b"1")])
    await store.txn([Put("other", b"x")])
    await store.txn([Put("w/b", b"2"), Put("w/c", b"3")])
    await store.txn([Delete("w/a")])
    events = await next_events(store.watch("w/", start=first.revision), 4)
    assert [(e.type, e.key) for e in events] == [
        (EventType.PUT, "w/a"), (EventType.PUT, "w/b"), (EventType.PUT, "w/c"), (EventType.DELETE, "w/a"),
    ]
    assert events[1].revision == events[2].revision
    assert events[3].prev_value == b"1" and events[3].value is None
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions)


async def test_watch_live_concurrent_writers(store: KVStore) -> None:
    start = (await store.revision())[0] + 1
    stream = store.watch("live/", start=start)
    writers = 20
    results = await asyncio.gather(*(store.txn([Put(f"live/{i}", b"v")]) for i in range(writers)))
    events = await next_events(stream, writers)
    assert sorted(e.revision for e in events) == [e.revision for e in events]
    assert {e.revision for e in events} == {r.revision for r in results}
    await stream.aclose()  # type: ignore[attr-defined]


async def test_watch_resumes_after_reconnect(store: KVStore) -> None:
    await store.txn([Put("r/1", b"1")])
    seen = await next_events(store.watch("r/", start=1), 1)
    await store.txn([Put("r/2", b"2")])
    await store.txn([Put("r/3", b"3")])
    resumed = await next_events(store.watch("r/", start=seen[-1].revision + 1), 2)
    assert [e.key for e in resumed] == ["r/2", "r/3"]


async def test_compacted_watch_errors_and_reread(store: KVStore) -> None:
    for i in range(5):
        await store.txn([Put("c/k", str(i).encode())])
    current, _ = await store.revision()
    await store.compact(current - 1)
    assert (await store.revision())[1] == current - 1
    with pytest.raises(CompactedError) as info:
        await store.events(1, "c/")
    assert info.value.compact_revision == current - 1
    with pytest.raises(CompactedError):
        await next_events(store.watch("c/", start=2), 1)
    # the documented recovery: full re-read, then watch from the read's revision + 1
    snapshot = await store.range("c/")
    assert snapshot.items[0].value == b"4"
    await store.txn([Put("c/k", b"5")])
    events = await next_events(store.watch("c/", start=snapshot.revision + 1), 1)
    assert events[0].value == b"5"
    assert (await store.get("c/k")).version == 6  # type: ignore[union-attr]


async def test_large_revision_exceeding_page(store: KVStore) -> None:
    ops = [Put(f"big/{i:04d}", b"v") for i in range(30)]
    res = await store.txn(ops)
    page = await store.events(res.revision, "big/", limit=10)
    assert len(page) == 30


async def test_page_never_splits_a_revision(store: KVStore) -> None:
    a = await store.txn([Put("s/1", b"1"), Put("s/2", b"2")])
    await store.txn([Put("s/3", b"3"), Put("s/4", b"4")])
    page = await store.events(a.revision, "s/", limit=3)
    assert [e.key for e in page] == ["s/1", "s/2"]


async def test_durable_across_reopen(store: KVStore) -> None:
    from mezzo.storage import open_store

    res = await store.txn([Put("dur", b"yes")])
    await store.close()
    again = open_store(store.url)
    await again.open()
    try:
        kv = await again.get("dur")
        assert kv is not None and kv.value == b"yes"
        assert (await again.revision())[0] == res.revision
    finally:
        await again.close()
    await store.open()


async def test_second_handle_sees_writes_through_watch(store: KVStore) -> None:
    """Another node on the same storage is woken by a write it did not make."""
    from mezzo.storage import open_store

    other = open_store(store.url)
    other.poll_interval = 0.05  # type: ignore[attr-defined]
    await other.open()
    try:
        start = (await other.revision())[0] + 1
        stream = other.watch("n/", start=start)
        await store.txn([Put("n/1", b"from-first")])
        events = await next_events(stream, 1)
        assert events[0].value == b"from-first"
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await other.close()


async def test_ready(store: KVStore) -> None:
    assert await store.ready()


async def test_idle_watch_runs_no_queries(store: KVStore) -> None:
    """A parked watch costs nothing: only the store's one change check runs while nothing changes."""
    store.poll_interval = 0.01  # type: ignore[attr-defined]
    queries = checks = 0
    events, advance = store.events, store._signal.advance  # type: ignore[attr-defined]

    async def counting_events(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal queries
        queries += 1
        return await events(*args, **kwargs)

    def counting_advance(revision: int, *narrowing) -> None:  # type: ignore[no-untyped-def]
        nonlocal checks
        checks += 1
        advance(revision, *narrowing)

    store.events = counting_events  # type: ignore[method-assign]
    store._signal.advance = counting_advance  # type: ignore[attr-defined]
    taking = asyncio.create_task(next_events(store.watch("idle/"), 1))
    await wait_for(lambda: queries >= 1)
    await wait_for(lambda: checks >= 20)  # twenty change checks, none of them finding a change
    assert queries == 1
    await store.txn([Put("idle/k", b"v")])
    assert [e.key for e in await taking] == ["idle/k"]


async def test_change_committed_during_a_watch_query_is_not_slept_through(store: KVStore) -> None:
    """The watch's query reads a snapshot from before a write whose wake-up comes while the query
    runs: the watch must query again rather than park until some later change."""
    events = store.events
    calls = 0

    async def racing_events(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        page = await events(*args, **kwargs)
        if calls == 1:
            await store.txn([Put("race/k", b"v")])  # committed and announced after the snapshot
        return page

    store.events = racing_events  # type: ignore[method-assign]
    assert [e.key for e in await next_events(store.watch("race/"), 1)] == ["race/k"]


async def test_write_elsewhere_is_seen_though_a_later_local_write_names_other_keys(store: KVStore) -> None:
    """A local write wakes only the watches of its keys, unless a revision before it came from
    elsewhere and was not announced yet: then every watch must look."""
    from mezzo.storage import open_store

    store.poll_interval = 3600  # type: ignore[attr-defined]  # no change check: only writes wake watches
    start = (await store.revision())[0] + 1
    taking = asyncio.create_task(next_events(store.watch("gap/x/", start=start), 1))
    other = open_store(store.url)
    await other.open()
    try:
        await other.txn([Put("gap/x/1", b"elsewhere")])
    finally:
        await other.close()
    await store.txn([Put("gap/y/1", b"here")])
    assert [e.value for e in await taking] == [b"elsewhere"]

