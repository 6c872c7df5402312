"""The embedded engine's promises (issue 8): SCAN that misses nothing, LFU and noeviction limits,
snapshots that survive any TTL and any damage, and the per-namespace metrics in Prometheus."""

from __future__ import annotations

from pathlib import Path

import pytest

from mezzo.cache.commands import COMMANDS
from mezzo.cache.engine import Engine, Keyspace
from mezzo.cache.model import CacheSpec
from mezzo.cache.resp import RespConnection
from mezzo.cache.server import CacheServer
from mezzo.cache.stats import register_metrics
from mezzo.telemetry.metrics import Metrics
from mezzo.testing.transport import FakeTransport


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def full_scan(ks: Keyspace, count: int, between: object = None) -> list[bytes]:
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, keys = ks.scan(cursor, None, count)
        seen += keys
        if callable(between):
            between(seen)
        if cursor == 0:
            return seen


def test_scan_returns_every_key_that_stays_however_keys_are_read_written_and_deleted() -> None:
    """SCAN's guarantee: a full iteration returns every key present from start to end. Reads reorder
    the LRU list and deletes shorten it; neither may make a cursor skip keys."""
    ks = Keyspace("s")
    for i in range(300):
        ks.store(b"k%d" % i, b"v")
    deleted: set[bytes] = set()

    def meanwhile(seen: list[bytes]) -> None:
        for key in seen[-10:]:
            ks.lookup(key)  # recently used: moves to the LRU end
        for key in seen[:2]:
            if key not in deleted:
                deleted.add(key)
                ks.delete(key)
        ks.store(b"new%d" % len(seen), b"v")

    seen = full_scan(ks, 10, meanwhile)
    stayed = {b"k%d" % i for i in range(300)} - deleted
    assert stayed <= set(seen), f"SCAN skipped {len(stayed - set(seen))} keys that never went"


def test_scan_cursors_stay_valid_across_compaction_and_keys_lists_each_key_once() -> None:
    ks = Keyspace("s")
    for i in range(100):
        ks.store(b"stay%d" % i, b"v")
    cursor, first = ks.scan(0, None, 30)
    for i in range(3000):  # churn: the order list fills with holes and is compacted
        ks.store(b"tmp%d" % i, b"v")
        ks.delete(b"tmp%d" % i)
    assert len(ks.order) < 1500
    ks.delete(b"stay0")
    ks.store(b"stay0", b"again")  # made again: it may come twice from SCAN, never from KEYS
    rest: list[bytes] = []
    while cursor:
        cursor, keys = ks.scan(cursor, None, 7)
        rest += keys
    assert {b"stay%d" % i for i in range(1, 100)} <= set(first) | set(rest)
    listed = ks.keys(b"stay*")
    assert len(listed) == len(set(listed)) == 100
    ks.flush()
    assert ks.scan(0, None, 10) == (0, []) and ks.keys() == []


def test_lfu_keeps_the_key_read_most_where_lru_would_drop_it() -> None:
    ks = Keyspace("f", max_memory=20_000, policy="lfu")
    ks.store(b"favourite", b"x" * 100)
    for _ in range(50):
        assert ks.lookup(b"favourite") is not None
    for i in range(400):  # written after the favourite was last read: LRU would evict it first
        ks.store(b"once%d" % i, b"x" * 100)
    assert ks.evictions > 0 and ks.memory <= 20_000
    assert ks.lookup(b"favourite") is not None


def test_noeviction_refuses_writes_over_the_limit_and_keeps_what_was_there() -> None:
    """A refused write loses nothing: an overwrite that would not fit leaves the old value."""
    server = CacheServer(Engine(), None, require_auth=False)
    ks = server.engine.space("default")
    ks.max_memory, ks.policy = 2_000, "noeviction"
    conn, out = RespConnection(server), FakeTransport()
    conn.connection_made(out)  # type: ignore[arg-type]
    conn.data_received(encode(b"SET", b"a", b"x" * 500) + encode(b"HSET", b"h", b"f", b"v")
                       + encode(b"SET", b"a", b"y" * 5_000) + encode(b"APPEND", b"a", b"z" * 5_000)
                       + encode(b"SET", b"b", b"w" * 5_000) + encode(b"GET", b"a"))
    oom = b"-OOM command not allowed when used memory > 'maxmemory'\r\n"
    assert out.out == b"+OK\r\n:1\r\n" + oom * 3 + b"$500\r\n" + b"x" * 500 + b"\r\n"
    assert ks.evictions == 0 and ks.memory <= 2_000
    for i in range(40):  # a hash grown in place may pass the limit once; then hash writes are refused too
        conn.data_received(encode(b"HSET", b"h", b"f%d" % i, b"v" * 30))
    assert out.out.endswith(oom) and ks.lookup(b"h") is not None and ks.lookup(b"a") == b"x" * 500
    conn.data_received(encode(b"HDEL", b"h", b"f0") + encode(b"DEL", b"h") + encode(b"SET", b"c", b"1"))
    assert out.out.endswith(b":1\r\n:1\r\n+OK\r\n")  # removing always works, and makes room


def test_the_cache_kind_declares_noeviction_and_applying_it_never_raises() -> None:
    spec = CacheSpec.model_validate({"maxMemory": "1KiB", "eviction": "noeviction"})
    assert spec.eviction == "noeviction"
    ks = Keyspace("n")
    for i in range(50):
        ks.store(b"k%d" % i, b"v" * 100)
    ks.max_memory, ks.policy = 1024, "noeviction"
    ks.enforce()  # what applying the resource does: over the limit already, nothing is thrown out
    assert len(ks.data) == 50


def test_a_snapshot_holds_any_deadline_and_a_damaged_one_keeps_what_came_before(tmp_path: Path) -> None:
    engine = Engine()
    ks = engine.space("default")
    ks.store(b"far", b"v", ttl_ms=10**22)  # later than 64 bits of milliseconds
    for i in range(20):
        ks.store(b"k%d" % i, b"v%d" % i)
    path = tmp_path / "cache.snapshot"
    assert engine.save(path) == 21
    again = Engine()
    assert again.load(path) == 21 and again.space("default").ttl_ms(b"far") > 10**12
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    damaged = Engine()
    with pytest.raises(ValueError, match="damaged") as info:  # SnapshotDamaged: the module logs it and starts
        damaged.load(path)
    assert getattr(info.value, "loaded", None) == 20 == len(damaged.space("default").data)
    path.write_bytes(b"not a snapshot")
    with pytest.raises(ValueError, match="not a Mezzo cache snapshot"):
        Engine().load(path)


def test_command_lists_psetex_and_getex_takes_every_option() -> None:
    server = CacheServer(Engine(), None, require_auth=False)
    conn, out = RespConnection(server), FakeTransport()
    conn.connection_made(out)  # type: ignore[arg-type]
    assert b"psetex" in COMMANDS
    conn.data_received(encode(b"PSETEX", b"k", b"60000", b"v") + encode(b"GETEX", b"k", b"PXAT", b"1")
                       + encode(b"EXISTS", b"k"))
    assert out.out == b"+OK\r\n$1\r\nv\r\n:0\r\n"


async def test_prometheus_has_every_per_namespace_figure() -> None:
    """hits, misses, hit ratio, evictions, memory, ops and ops/s per namespace, and expired keys."""
    from mezzo.cache.module import _SpaceCollector

    metrics = Metrics()
    engine = Engine()
    register_metrics(metrics, engine)
    collector = _SpaceCollector()
    collector.engine = engine
    metrics.registry.register(collector)
    ks = engine.space("orders")
    ks.max_memory = 1_000
    for i in range(30):
        ks.store(b"k%d" % i, b"x" * 50)
    ks.lookup(b"k29")
    ks.lookup(b"gone")
    ks.store(b"short", b"v", ttl_ms=1)
    ks.sampler.tick(100.0, 0)
    ks.sampler.tick(102.0, ks.ops)  # two seconds of operations: ops/s is known
    ks.expires[b"short"] = 0
    ks.sweep()
    body = metrics.render()[0].decode()
    for line in ('mezzo_cache_hits_total{namespace="orders"} 1.0', 'mezzo_cache_misses_total{namespace="orders"} 1.0',
                 'mezzo_cache_hit_ratio{namespace="orders"} 0.5', 'mezzo_cache_expired_keys_total{namespace="orders"} 1.0',
                 f'mezzo_cache_evictions_total{{namespace="orders"}} {float(ks.evictions)}',
                 f'mezzo_cache_memory_bytes{{namespace="orders"}} {float(ks.memory)}',
                 f'mezzo_cache_ops_total{{namespace="orders"}} {float(ks.ops)}'):
        assert line in body, line
    assert ks.evictions > 0
    assert 'mezzo_cache_ops_per_second{namespace="orders"}' in body


def test_active_expiry_removes_keys_nobody_reads_from_a_sample_only() -> None:
    """Expired keys nobody touches go (memory comes back), and a round of the sweeper (every 100 ms on
    the event loop) reads a sample: it must not walk every key with a TTL each time."""

    class Walked(dict):  # type: ignore[type-arg]
        items_walked = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Walked.items_walked += len(self)
            return super().__iter__()

    ks = Keyspace("e")
    ks.expires = Walked()
    for i in range(20_000):
        ks.store(b"long%d" % i, b"v", ttl_ms=3_600_000)
    for i in range(1_000):
        ks.store(b"short%d" % i, b"v", ttl_ms=3_600_000)
        ks.expires[b"short%d" % i] = 0  # its deadline has passed
    memory = ks.memory
    for _ in range(20_000):
        if ks.expired == 1_000:
            break
        ks.sweep()
    assert ks.expired == 1_000 and len(ks.data) == 20_000 and ks.memory < memory
    assert Walked.items_walked < 20_000, f"the sweeper walked {Walked.items_walked} keys"


def test_dbsize_counts_without_walking_the_namespace() -> None:
    """DBSIZE is O(1) in Redis (monitoring polls it); walking a million keys blocked the event loop."""
    from collections import OrderedDict

    class Walked(OrderedDict):  # type: ignore[type-arg]
        items_walked = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Walked.items_walked += len(self)
            return super().__iter__()

    server = CacheServer(Engine(), None, require_auth=False)
    ks = server.engine.space("default")
    for i in range(5_000):
        ks.store(b"k%d" % i, b"v")
    ks.data = Walked(ks.data)
    conn, out = RespConnection(server), FakeTransport()
    conn.connection_made(out)  # type: ignore[arg-type]
    conn.data_received(encode(b"DBSIZE") * 3)
    assert out.out == b":5000\r\n" * 3 and Walked.items_walked == 0
