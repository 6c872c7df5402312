"""A ketama consistent-hash ring, point for point the one libketama and twemproxy build.

Each node gets ``floor(weight / total * 40 * nodes)`` MD5 digests of ``"<name>-<i>"`` (``name`` is
``host:port`` unless the node is given a name, as in twemproxy), and every digest gives four
points: its bytes 0-3, 4-7, 8-11 and 12-15 read little-endian. With equal weights that is 160
points per node. A key hashes to the first four bytes of its MD5 (little-endian) and belongs to
the first point at or after that value, wrapping to the lowest point. A key with a hash tag
(``user:{42}:cart``) hashes only the part between the first ``{`` and the next ``}`` when that
part is not empty, as Redis Cluster and twemproxy's ``hash_tag: "{}"`` do, so related keys share
a node.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable

POINTS_PER_DIGEST = 4
DIGESTS_PER_WEIGHT = 40  # 160 points per node of average weight


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that decides its node: the ``{tag}`` when there is a non-empty one."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_hash(key: bytes) -> int:
    """libketama's ``ketama_hashi``: the MD5 digest's first four bytes, little-endian."""
    return int.from_bytes(hashlib.md5(hash_tag(key)).digest()[:4], "little")


def node_points(name: str, digests: int) -> list[int]:
    points = []
    for i in range(digests):
        digest = hashlib.md5(f"{name}-{i}".encode()).digest()
        points.extend(int.from_bytes(digest[h * 4:h * 4 + 4], "little") for h in range(POINTS_PER_DIGEST))
    return points


class KetamaRing:
    """Node names (with weights) on the continuum; ``node_for(key)`` is a binary search."""

    def __init__(self, nodes: Iterable[tuple[str, int]] = ()) -> None:
        members = [(name, weight) for name, weight in nodes if weight > 0]
        self.weights = dict(members)
        total = sum(self.weights.values())
        pairs: list[tuple[int, str]] = []
        for name, weight in members:
            # the tiny epsilon is twemproxy's: it keeps 40.0 from flooring to 39 through float error
            digests = math.floor(weight / total * DIGESTS_PER_WEIGHT * len(members) + 1e-10)
            pairs.extend((point, name) for point in node_points(name, digests))
        pairs.sort()
        self.points = [p for p, _ in pairs]
        self.owners = [n for _, n in pairs]

    def __len__(self) -> int:
        return len(self.weights)

    def __contains__(self, name: object) -> bool:
        return name in self.weights

    def owner_of_hash(self, value: int) -> str:
        if not self.points:
            raise LookupError("the ring has no nodes")
        index = bisect.bisect_left(self.points, value)
        return self.owners[index if index < len(self.points) else 0]

    def node_for(self, key: bytes) -> str:
        return self.owner_of_hash(key_hash(key))
