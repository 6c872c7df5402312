"""Hot keys (Space-Saving), big keys, ops/s, tags and the invalidation feed of the engine."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mezzo.cache.engine import Engine, Keyspace
from mezzo.cache.hotkeys import BigKeys, KeySampler, SpaceSaving
from mezzo.cache.invalidation import MAX_PENDING, Tracking
from mezzo.cache.stats import big_keys, report, stats


def test_space_saving_finds_the_heavy_hitters_of_a_skewed_stream() -> None:
    rng = random.Random(7)
    sketch = SpaceSaving(capacity=16)
    truth: dict[bytes, int] = {}
    for _ in range(20_000):
        key = b"hot%d" % rng.randrange(3) if rng.random() < 0.5 else b"cold%d" % rng.randrange(5000)
        truth[key] = truth.get(key, 0) + 1
        sketch.offer(key)
    top = sketch.top(3)
    assert {key for key, _, _ in top} == {b"hot0", b"hot1", b"hot2"}
    for key, count, error in top:
        assert count - error <= truth[key] <= count  # Space-Saving's guarantee


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=400), st.integers(1, 12))
def test_space_saving_bounds_hold_for_any_stream(stream: list[int], capacity: int) -> None:
    sketch = SpaceSaving(capacity=capacity)
    for item in stream:
        sketch.offer(b"%d" % item)
    assert len(sketch.counts) <= capacity
    for key, count, error in sketch.top(capacity):
        true = stream.count(int(key))
        assert count - error <= true <= count
    if stream:  # any key seen more than n / capacity times is in the table
        for item in set(stream):
            if stream.count(item) > len(stream) / capacity:
                assert b"%d" % item in sketch.counts


def test_decay_halves_counts_and_drops_the_forgotten() -> None:
    sketch = SpaceSaving(capacity=4)
    for _ in range(10):
        sketch.offer(b"a")
    sketch.offer(b"b")
    sketch.decay()
    assert sketch.counts == {b"a": 5}


def test_big_keys_keep_the_largest() -> None:
    big = BigKeys(capacity=2)
    for key, size in ((b"a", 10), (b"b", 500), (b"c", 20), (b"d", 300)):
        big.offer(key, size)
    assert big.sizes == {b"b": 500, b"d": 300}


def test_engine_samples_operations_into_hot_and_big_keys() -> None:
    ks = Keyspace("t")
    ks.store(b"huge", b"x" * 100_000)
    for i in range(200):
        ks.store(b"k%d" % i, b"v")
    for _ in range(5000):
        ks.lookup(b"hot")  # a miss still counts as an access of the key
        ks.lookup(b"k1")
    assert ks.ops == 201 + 10_000
    hot = [h.key for h in ks.sampler.hot_keys(2)]
    assert set(hot) == {b"hot", b"k1"}
    found = report(ks, 5)
    assert found["big"][0]["key"] == "huge" and found["big"][0]["bytes"] > 100_000
    assert found["sampledOps"] > 0
    ks.delete(b"huge")
    assert all(entry["key"] != "huge" for entry in big_keys(ks, 5))


def test_ops_per_second_from_the_sweep_clock() -> None:
    sampler = KeySampler()
    assert sampler.ops_per_second(100.0, 0) is None
    sampler.tick(100.0, 0)
    sampler.tick(100.5, 50)  # under a second: not a new point
    sampler.tick(102.0, 400)
    assert sampler.ops_per_second(102.0, 400) == 200.0
    for t in range(103, 130):
        sampler.tick(float(t), 400 + (t - 102) * 10)
    assert sampler.ops_per_second(129.0, 400 + 27 * 10) == 10.0  # only the last ten seconds count


def test_stats_report_ratio_and_ops() -> None:
    ks = Keyspace("s")
    ks.store(b"a", b"1")
    ks.lookup(b"a")
    ks.lookup(b"b")
    got = stats(ks)
    assert got["hits"] == 1 and got["misses"] == 1 and got["hitRatio"] == 0.5 and got["ops"] == 3


def test_tags_follow_writes_removals_and_snapshots(tmp_path: Path) -> None:
    engine = Engine()
    ks = engine.space("tags")
    for key in (b"a", b"b", b"c"):
        ks.store(key, b"v")
    ks.annotate(b"a", ["users", "u:1"], b'{"f": 1}')
    ks.annotate(b"b", ["users"], b"note")
    ks.annotate(b"c", ["u:1"])
    ks.annotate(b"missing", ["users"], b"x")  # not a live key: no label, no note
    assert ks.tags["users"] == {b"a", b"b"} and ks.meta == {b"a": b'{"f": 1}', b"b": b"note"}
    ks.store(b"b", b"new")  # a write drops the key's labels and note
    assert ks.tags["users"] == {b"a"} and b"b" not in ks.meta
    ks.annotate(b"b", ["users"])
    engine.save(tmp_path / "snap")
    restored = Engine()
    assert restored.load(tmp_path / "snap") == 3
    again = restored.spaces["tags"]
    assert again.tags == {"users": {b"a", b"b"}, "u:1": {b"a", b"c"}}
    assert again.meta == {b"a": b'{"f": 1}'}
    assert again.drop_tag("users") == 2 and not again.exists(b"a") and again.exists(b"c")
    assert again.tags == {"u:1": {b"c"}} and again.meta == {}


def test_snapshots_of_the_previous_format_still_load(tmp_path: Path) -> None:
    import struct

    name, key, blob = b"old", b"k", b"v"
    data = b"MZC1" + struct.pack(">HIBqI", len(name), len(key), 0, -1, len(blob)) + name + key + blob
    (tmp_path / "old").write_bytes(data)
    engine = Engine()
    assert engine.load(tmp_path / "old") == 1 and engine.spaces["old"].string(b"k") == b"v"


async def test_tracking_tells_each_reader_once_per_change() -> None:
    engine = Engine()
    ks = engine.space("n")
    tracking = Tracking(engine)
    first, second = tracking.listen("n"), tracking.listen("n")
    for key in (b"a", b"b", b"gone", b"evict"):
        ks.store(key, b"v")
    assert tracking.track(ks, b"a", first.id) and tracking.track(ks, b"a", second.id)
    assert tracking.track(ks, b"b", first.id) and not tracking.track(ks, b"b", "nobody")
    ks.store(b"a", b"w")
    assert first.take() == {"keys": ["a"]} and second.take() == {"keys": ["a"]}
    ks.store(b"a", b"x")  # nobody read it since: nobody hears of it
    assert first.take() is None
    ks.expire(b"b", 10_000)  # a new TTL: a copy must not outlive it
    assert first.take() == {"keys": ["b"]}
    ks.expires[b"gone"] = 0  # its TTL ran out: the lazy path removes it on the next touch
    tracking.track(ks, b"gone", first.id)
    assert not ks.exists(b"gone") and first.take() == {"keys": ["gone"]}
    tracking.track(ks, b"evict", first.id)
    ks.max_memory = ks.memory  # the next write evicts the least recently used key
    ks.store(b"new", b"v")
    assert not ks.exists(b"evict") and first.take() == {"keys": ["evict"]}
    ks.flush()
    assert first.take() == {"flush": True} and second.take() == {"flush": True}
    tracking.leave(first)
    tracking.leave(second)
    assert ks.tracker is None


async def test_tracking_is_bounded_and_a_slow_listener_gets_a_flush() -> None:
    engine = Engine()
    ks = engine.space("n")
    tracking = Tracking(engine, max_keys=2)
    listener = tracking.listen("n")
    for key in (b"a", b"b", b"c"):
        ks.store(key, b"v")
        tracking.track(ks, key, listener.id)
    assert listener.take() == {"keys": ["a"]}  # the oldest tracked key made room
    assert len(tracking.tables["n"]) == 2
    for i in range(MAX_PENDING + 1):
        listener.push(b"k%d" % i)
    assert listener.take() == {"flush": True} and listener.take() is None
