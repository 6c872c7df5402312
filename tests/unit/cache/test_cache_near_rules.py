"""The near cache's rules for what it may keep, and the envelope and XFetch test of the patterns."""

from __future__ import annotations

import math

import pytest

from mezzo.sdk.cache_near import NearCache
from mezzo.sdk.cache_patterns import Meta, Policy, visible, xfetch_due


def live_near(**kwargs: object) -> NearCache:
    near = NearCache(None, "ns", **kwargs)  # type: ignore[arg-type]  # no stream in these tests
    near.listener = "me"
    return near


def test_keeps_a_tracked_read_and_serves_it() -> None:
    near = live_near()
    token = near.begin("k")
    near.finish("k", token, b"v", None, tracked=True, meta="note")
    entry = near.get("k")
    assert entry is not None and entry[0] == b"v" and entry[2] == "note" and near.hits == 1


def test_an_invalidation_during_the_read_wins() -> None:
    near = live_near()
    token = near.begin("k")
    near.drop("k")  # the server said "k changed" before the read's answer arrived
    near.finish("k", token, b"old", None, tracked=True)
    assert near.get("k") is None
    token = near.begin("k")  # the next read is clean again
    near.finish("k", token, b"new", None, tracked=True)
    assert near.get("k") is not None


def test_untracked_reads_reads_across_a_flush_and_reads_while_down_are_not_kept() -> None:
    near = live_near()
    token = near.begin("a")
    near.finish("a", token, b"v", None, tracked=False)
    token = near.begin("b")
    near.flush()
    near.finish("b", token, b"v", None, tracked=True)
    token = near.begin("c")
    near.listener = None
    near.finish("c", token, b"v", None, tracked=True)
    assert near.entries == {}


def test_copies_never_outlive_max_ttl_or_the_key_ttl() -> None:
    near = live_near(max_ttl=30.0)
    token = near.begin("short")
    near.finish("short", token, b"v", 0, tracked=True)  # its TTL is up: not kept
    token = near.begin("k")
    near.finish("k", token, b"v", 5_000, tracked=True)
    token = near.begin("m")
    near.finish("m", token, b"v", None, tracked=True)
    assert "short" not in near.entries
    assert near.entries["m"][1] - near.entries["k"][1] == pytest.approx(25.0, abs=1.0)
    near.entries["k"] = (b"v", 0.0, None)  # its deadline passed
    assert near.get("k") is None and "k" not in near.entries


def test_lru_bound() -> None:
    near = live_near(max_keys=2)
    for key in ("a", "b"):
        near.finish(key, near.begin(key), b"v", None, tracked=True)
    near.get("a")  # a is now the most recent
    near.finish("c", near.begin("c"), b"v", None, tracked=True)
    assert list(near.entries) == ["a", "c"]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        NearCache(None, "ns", max_keys=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NearCache(None, "ns", max_ttl=0)  # type: ignore[arg-type]


def test_meta_round_trip_and_what_a_plain_read_sees() -> None:
    for meta in (Meta(1234.5, 0.25), Meta(99.0, 0.0, absent=True)):
        assert Meta.decode(meta.encode()) == meta
    assert Meta.decode(None) is None and Meta.decode("") is None
    assert Meta.decode("not json") is None and Meta.decode('{"f": 1}') is None
    assert visible(b"v", Meta(1.0, 0.0).encode()) == b"v"
    assert visible(b"", Meta(1.0, 0.0, absent=True).encode()) is None
    assert visible(b"v", "someone else's note") == b"v"


def test_xfetch_refreshes_more_often_near_expiry() -> None:
    assert not xfetch_due(delta=1.0, fresh_until=100.0, now=50.0, beta=1.0, rand=lambda: 0.5)
    # -ln(1 - 0.5) = ln 2: due when now + delta * beta * ln 2 >= fresh_until
    assert xfetch_due(delta=1.0, fresh_until=100.0, now=100.0 - math.log(2) + 1e-9, beta=1.0, rand=lambda: 0.5)
    assert not xfetch_due(delta=1.0, fresh_until=100.0, now=100.0 - math.log(2) - 1e-6, beta=1.0, rand=lambda: 0.5)
    assert not xfetch_due(delta=1.0, fresh_until=100.0, now=99.99, beta=0.0, rand=lambda: 0.999)
    assert xfetch_due(delta=0.0, fresh_until=100.0, now=100.0, beta=1.0, rand=lambda: 0.0)


def test_policy_validation() -> None:
    assert Policy.of("1m", "30s", "5s", 1.0, ["t"], 10).ttl == 60.0
    for bad in ((0, 0, None), (1, -1, None), (1, 0, 0)):
        with pytest.raises(ValueError):
            Policy.of(*bad, 1.0, (), 10)
