"""The embedded engine's LFU, as Redis runs it with its defaults: a logarithmic 0-255 counter per key
(new keys at 5, lfu-log-factor 10), decayed lazily by one per minute without access (lfu-decay-time
1), eviction by a sample of 5 keys (maxmemory-samples) that costs the sample, not the keyspace, and
``OBJECT FREQ`` answering the decayed counter. The clock is patched: no assertion depends on timing."""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from mezzo.cache import engine
from mezzo.cache.engine import LFU_INIT_VAL, Engine, Keyspace, lfu_decayed, lfu_touched
from mezzo.cache.resp import RespConnection
from mezzo.cache.server import CacheServer
from mezzo.testing.transport import FakeTransport


class Clock:
    """LFU's minute clock, moved by hand."""

    def __init__(self, minute: int = 1000) -> None:
        self.minute = minute

    def __call__(self) -> int:
        return self.minute


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(engine, "lfu_minutes", c)
    return c


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_a_new_key_starts_at_5_and_the_first_hits_always_count(clock: Clock) -> None:
    ks = Keyspace("f", policy="lfu")
    ks.store(b"k", b"v")
    assert ks.frequency(b"k") == LFU_INIT_VAL == 5
    ks.lookup(b"k")
    assert ks.frequency(b"k") == 6  # at or below LFU_INIT_VAL the increment is certain
    ks.store(b"k", b"again")
    assert ks.frequency(b"k") == 6  # an overwrite keeps the counter, as Redis keeps the old object's
    ks.delete(b"k")
    ks.store(b"k", b"new")
    assert ks.frequency(b"k") == 5  # a key made again is new


def test_the_counter_grows_logarithmically(clock: Clock) -> None:
    ks = Keyspace("f", policy="lfu")
    ks.store(b"k", b"v")
    for _ in range(1000):
        ks.lookup(b"k")
    counter = ks.frequency(b"k")
    assert 10 < counter < 40, counter  # Redis' table for factor 10: about 18 after 1000 hits
    assert 0 <= ks.freq[b"k"] & 0xFF == counter <= 255


def test_the_counter_stops_at_255(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.0)  # every increment lands
    ks = Keyspace("f", policy="lfu")
    ks.store(b"k", b"v")
    for _ in range(400):
        ks.lookup(b"k")
    assert ks.frequency(b"k") == 255
    assert ks.freq[b"k"] >> 8 == clock.minute


def test_the_increment_probability_is_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """p = 1 / ((counter - 5) * 10 + 1): at 15 a draw below 1/101 increments, one above does not."""
    packed = 7 << 8 | 15
    monkeypatch.setattr(random, "random", lambda: 1 / 101 - 1e-9)
    assert lfu_touched(packed, 7) == 7 << 8 | 16
    monkeypatch.setattr(random, "random", lambda: 1 / 101 + 1e-9)
    assert lfu_touched(packed, 7) == 7 << 8 | 15
    assert lfu_touched(None, 9) == 9 << 8 | 6  # no counter yet: a new key's 5, then certain


def test_decay_is_one_per_minute_without_access_and_lazy(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    ks = Keyspace("f", policy="lfu")
    ks.store(b"k", b"v")
    monkeypatch.setattr(random, "random", lambda: 0.0)
    for _ in range(15):
        ks.lookup(b"k")
    assert ks.frequency(b"k") == 20
    monkeypatch.setattr(random, "random", lambda: 0.999)  # from here on, hits above 5 do not increment
    clock.minute += 7
    assert ks.frequency(b"k") == 13  # 7 minutes: 7 less
    assert ks.freq[b"k"] == 1000 << 8 | 20  # read without touching: the stored counter is as it was
    ks.lookup(b"k")  # an access writes the decayed counter back, with this minute
    assert ks.freq[b"k"] == 1007 << 8 | 13
    clock.minute += 3
    assert ks.frequency(b"k") == 10
    clock.minute += 500
    assert ks.frequency(b"k") == 0  # never below 0
    assert lfu_decayed(65534 << 8 | 9, 2) == 5  # the 16-bit minute wraps (65534 -> 2: 4 minutes)


def test_decay_follows_lfu_decay_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "LFU_DECAY_TIME", 5)
    assert lfu_decayed(100 << 8 | 30, 112) == 28  # 12 minutes: two whole periods of 5
    monkeypatch.setattr(engine, "LFU_DECAY_TIME", 0)
    assert lfu_decayed(100 << 8 | 30, 60_000) == 30  # 0: counters never decay


def test_no_sweep_walks_the_counters(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Aging is the lazy decay: the periodic sweep leaves every counter as it was."""
    ks = Keyspace("f", policy="lfu")
    for i in range(100):
        ks.store(b"k%d" % i, b"v")
    before = dict(ks.freq)
    monkeypatch.setattr(random, "random", lambda: 0.0)  # the old sweep's 1% halving would fire
    for _ in range(50):
        ks.sweep()
    assert ks.freq == before


def test_hot_keys_survive_memory_pressure_and_cold_ones_go(clock: Clock) -> None:
    ks = Keyspace("f", max_memory=40_000, policy="lfu")
    hot = [b"hot%d" % i for i in range(5)]
    for key in hot:
        ks.store(key, b"x" * 100)
        for _ in range(100):
            ks.lookup(key)
    for i in range(3000):  # written after the hot keys were last read: LRU would drop those first
        ks.store(b"cold%d" % i, b"x" * 100)
    assert ks.evictions > 2500 and ks.memory <= 40_000
    assert all(ks.exists(key) for key in hot)
    assert all(ks.frequency(key) > LFU_INIT_VAL for key in hot)


def test_an_old_favourite_decays_and_goes(clock: Clock) -> None:
    """A key read a lot long ago ends below keys just made: eviction compares decayed counters."""
    ks = Keyspace("f", max_memory=20_000, policy="lfu")
    ks.store(b"old", b"x" * 100)
    for _ in range(200):
        ks.lookup(b"old")
    clock.minute += 60  # an hour without a read: its counter is 0 now, under a new key's 5
    for i in range(400):
        ks.store(b"new%d" % i, b"x" * 100)
    assert ks.evictions > 0
    assert not ks.exists(b"old")


class CountingDict(OrderedDict):  # type: ignore[type-arg]
    """``data`` that counts the keys handed out by iteration."""

    walked = 0

    def __iter__(self) -> Iterator[bytes]:
        for key in super().__iter__():
            CountingDict.walked += 1
            yield key

    def keys(self):  # type: ignore[no-untyped-def,override]
        CountingDict.walked += len(self)
        return super().keys()


class CountingList(list):  # type: ignore[type-arg]
    """``order`` that counts full walks (indexing is free)."""

    walks = 0

    def __iter__(self) -> Iterator[bytes]:
        CountingList.walks += 1
        return super().__iter__()


def test_eviction_in_a_big_keyspace_samples_without_listing_its_keys(clock: Clock,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ks = Keyspace("big", policy="lfu")
    for i in range(200_000):
        ks.store(b"k%d" % i, b"v")
    ks.data = CountingDict(ks.data)
    ks.order = CountingList(ks.order)
    CountingDict.walked = CountingList.walks = 0

    def no_sample(*args: object, **kwargs: object) -> list[object]:
        raise AssertionError("eviction must not sample a copy of every key")

    monkeypatch.setattr(random, "sample", no_sample)
    draws = 0
    real_random = random.random

    def counted() -> float:
        nonlocal draws
        draws += 1
        return real_random()

    monkeypatch.setattr(random, "random", counted)
    ks.max_memory = ks.memory  # full: every new key evicts one
    for i in range(1000):
        ks.store(b"n%d" % i, b"v")
    assert ks.evictions > 500 and ks.memory <= ks.max_memory and len(ks.data) > 199_000
    assert CountingList.walks == 0  # order is only indexed
    assert CountingDict.walked <= 5 * ks.evictions  # at most the fallback's few keys per eviction
    assert draws <= 40 * ks.evictions  # a bounded number of draws per eviction


def test_a_keyspace_of_holes_is_compacted_and_small_ones_still_evict(clock: Clock) -> None:
    ks = Keyspace("f", policy="lfu")
    for i in range(3000):  # churn: SCAN's order fills with holes
        ks.store(b"t%d" % i, b"v")
        ks.delete(b"t%d" % i)
    for i in range(10):
        ks.store(b"k%d" % i, b"v")
    ks.max_memory = ks.memory
    cursor, first = ks.scan(0, None, 3)
    assert len(ks.order) > 2 * len(ks.data) + 32
    ks.store(b"kz", b"v")  # the same size as the others: one eviction makes room
    assert ks.evictions == 1 and len(ks.order) <= 2 * len(ks.data) + 32
    rest: list[bytes] = []
    while cursor:  # the cursor taken before the compaction still walks on
        cursor, keys = ks.scan(cursor, None, 3)
        rest += keys
    stayed = {b"k%d" % i for i in range(10)} & set(ks.data)
    assert len(stayed) == 9 and stayed <= set(first) | set(rest)
    tiny = Keyspace("t", policy="lfu")
    tiny.store(b"a", b"v")
    tiny.store(b"b", b"v")
    tiny.max_memory = tiny.memory - 1
    tiny.store(b"c", b"v")  # the newest key is protected, the others go until under the limit
    assert list(tiny.data) == [b"c"]


def test_a_namespace_turned_to_lfu_counts_its_old_keys_as_new(clock: Clock) -> None:
    ks = Keyspace("f")
    ks.store(b"a", b"v")
    assert ks.freq == {}  # lru keeps no counters
    ks.policy = "lfu"
    assert ks.frequency(b"a") == LFU_INIT_VAL
    ks.lookup(b"a")
    assert ks.frequency(b"a") == LFU_INIT_VAL + 1


def test_object_freq_over_resp_is_the_decayed_counter(clock: Clock) -> None:
    server = CacheServer(Engine(), None, require_auth=False)
    ks = server.engine.space("default")
    ks.policy = "lfu"
    conn, out = RespConnection(server), FakeTransport()
    conn.connection_made(out)  # type: ignore[arg-type]
    conn.data_received(encode(b"SET", b"k", b"v") + encode(b"OBJECT", b"FREQ", b"k") + encode(b"GET", b"k")
                       + encode(b"OBJECT", b"FREQ", b"k") + encode(b"OBJECT", b"FREQ", b"k"))
    assert out.out == b"+OK\r\n:5\r\n$1\r\nv\r\n:6\r\n:6\r\n"  # OBJECT itself does not count
    clock.minute += 4
    conn.data_received(encode(b"OBJECT", b"FREQ", b"k") + encode(b"OBJECT", b"FREQ", b"missing"))
    assert out.out.endswith(b":2\r\n$-1\r\n")
    ks.policy = "lru"
    conn.data_received(encode(b"OBJECT", b"FREQ", b"k"))
    assert out.out.endswith(b"-ERR An LFU maxmemory policy is not selected, access frequency not tracked. "
                            b"Please note that when switching between policies at runtime LRU and LFU data "
                            b"will take some time to adjust.\r\n")


async def test_object_freq_through_a_redis_client(clock: Clock) -> None:
    server = CacheServer(Engine(), None, require_auth=False)
    server.engine.space("default").policy = "lfu"
    listener = await asyncio.get_running_loop().create_server(server.protocol, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = aioredis.Redis(port=port)
    try:
        await client.set("k", "v")
        assert await client.object("freq", "k") == 5
        await client.get("k")
        assert await client.object("freq", "k") == 6
        clock.minute += 10
        assert await client.object("freq", "k") == 0
    finally:
        await client.aclose()
        listener.close()
        await listener.wait_closed()
