"""The ketama ring places points and keys exactly as libketama and twemproxy do."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mezzo.cache.distributed.ring import KetamaRing, hash_tag, key_hash, node_points

# Couchbase SDK RFC 26 ("Ketama Hashing") publishes a verification ring for these four servers,
# built with libketama's rules (40 MD5 digests of "host:port-i" per server, 4 points each).
RFC26 = [f"192.168.1.10{i}:11210" for i in range(1, 5)]


def test_rfc26_ring_size_and_wrap_around() -> None:
    ring = KetamaRing((name, 1) for name in RFC26)
    assert len(ring.points) == 4 * 160
    # RFC 26's test: the hash 2^32-1 is past the last point and wraps to .104's lowest point
    assert ring.owner_of_hash(4294967295) == "192.168.1.104:11210"
    assert ring.owner_of_hash(0) == "192.168.1.104:11210"


def test_rfc26_known_collision() -> None:
    """Two names that share exactly one point (from the same verification suite)."""
    shared = set(node_points("example.com:11210", 40)) & set(node_points("example137723.com:11210", 40))
    assert shared == {1723476360}


def test_points_are_md5_words_read_little_endian() -> None:
    # md5("127.0.0.1:6379-0") = 0657b78b ...: its first point is 0x8bb75706
    import hashlib

    digest = hashlib.md5(b"127.0.0.1:6379-0").digest()
    assert node_points("127.0.0.1:6379", 1)[0] == int.from_bytes(digest[:4], "little") == 0x8BB75706
    assert len(node_points("127.0.0.1:6379", 40)) == 160


def test_key_hash_is_libketama_hashi() -> None:
    # md5("foo") = acbd18db 4cc2f85c ...: little-endian 0xdb18bdac
    assert key_hash(b"foo") == 0xDB18BDAC == 3675831724
    assert key_hash(b"bar") == 421377335


def test_pinned_placements() -> None:
    ring = KetamaRing((name, 1) for name in RFC26)
    assert ring.node_for(b"foo") == "192.168.1.103:11210"
    assert ring.node_for(b"bar") == "192.168.1.104:11210"
    assert ring.node_for(b"user:1") == "192.168.1.101:11210"
    assert ring.node_for(b"hello world") == "192.168.1.104:11210"


def test_weights_give_points_as_twemproxy_does() -> None:
    # floor(weight / total * 40 * nodes) digests: 2/4*40*3 = 60 digests (240 points), 1/4*40*3 = 30 (120)
    ring = KetamaRing([("a:1", 2), ("b:1", 1), ("c:1", 1)])
    assert Counter(ring.owners) == {"a:1": 240, "b:1": 120, "c:1": 120}
    assert KetamaRing([("a:1", 0), ("b:1", 1)]).weights == {"b:1": 1}


def test_hash_tags_follow_redis_cluster_rules() -> None:
    assert hash_tag(b"{user1000}.following") == hash_tag(b"{user1000}.followers") == b"user1000"
    assert hash_tag(b"foo{}{bar}") == b"foo{}{bar}"  # an empty first tag: the whole key
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"
    assert hash_tag(b"no-tag") == b"no-tag" and hash_tag(b"open{only") == b"open{only"
    ring = KetamaRing((name, 1) for name in RFC26)
    assert ring.node_for(b"cart:{42}:a") == ring.node_for(b"cart:{42}:b") == ring.node_for(b"42")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=20), min_size=50, max_size=200, unique=True), st.integers(0, 3))
def test_removing_a_node_moves_only_its_keys(keys: list[bytes], removed: int) -> None:
    full = KetamaRing((name, 1) for name in RFC26)
    gone = RFC26[removed]
    smaller = KetamaRing((name, 1) for name in RFC26 if name != gone)
    for key in keys:
        if full.node_for(key) != gone:
            assert smaller.node_for(key) == full.node_for(key)
        else:
            assert smaller.node_for(key) != gone


def test_share_is_roughly_even() -> None:
    ring = KetamaRing((name, 1) for name in RFC26)
    counts = Counter(ring.node_for(b"key%d" % i) for i in range(20_000))
    assert all(4000 < c < 6000 for c in counts.values())
