"""Hot keys, big keys and ops/s of one namespace, from a sample of its operations.

The engine counts every operation in a plain int and hands one in about ``SAMPLE_EVERY`` to
``KeySampler.offer``. Hot keys are the Space-Saving top-k of that sample (Metwally et al.,
2005): a fixed table of ``capacity`` counters, where an unseen key takes over the smallest
counter and inherits its count as its error bound, so a key's true sampled count lies in
``[count - error, count]`` and every key with more than ``sampled / capacity`` hits is in the
table. Counts are halved every ``DECAY_EVERY`` seconds so the report follows current traffic.
Big keys are the largest sizes seen among sampled keys, re-measured when reported.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

SAMPLE_EVERY = 16  # mean gap between sampled operations
HOT_CAPACITY = 64
BIG_CAPACITY = 32
DECAY_EVERY = 60.0
RATE_WINDOW = 10.0


@dataclass(frozen=True)
class HotKey:
    key: bytes
    count: int  # estimated operations (sampled count x sample gap)
    error: int  # the estimate may be this much too high

    def as_json(self) -> dict[str, object]:
        return {"key": self.key.decode("utf-8", "replace"), "ops": self.count, "error": self.error}


class SpaceSaving:
    """Top-k frequent items of a stream in a fixed table of counters."""

    def __init__(self, capacity: int = HOT_CAPACITY) -> None:
        self.capacity = capacity
        self.counts: dict[bytes, int] = {}
        self.errors: dict[bytes, int] = {}
        self.seen = 0

    def offer(self, key: bytes) -> None:
        self.seen += 1
        counts = self.counts
        if key in counts:
            counts[key] += 1
            return
        if len(counts) < self.capacity:
            counts[key] = 1
            self.errors[key] = 0
            return
        smallest = min(counts, key=counts.__getitem__)
        floor = counts.pop(smallest)
        del self.errors[smallest]
        counts[key] = floor + 1
        self.errors[key] = floor

    def top(self, n: int) -> list[tuple[bytes, int, int]]:
        """``(key, count, error)`` by count, largest first."""
        ranked = sorted(self.counts.items(), key=lambda item: item[1], reverse=True)[:n]
        return [(key, count, self.errors[key]) for key, count in ranked]

    def decay(self) -> None:
        for key in list(self.counts):
            self.counts[key] //= 2
            self.errors[key] //= 2
            if not self.counts[key]:
                del self.counts[key], self.errors[key]
        self.seen //= 2


class BigKeys:
    """The largest sizes seen among offered keys, at most ``capacity`` of them."""

    def __init__(self, capacity: int = BIG_CAPACITY) -> None:
        self.capacity = capacity
        self.sizes: dict[bytes, int] = {}

    def offer(self, key: bytes, size: int) -> None:
        sizes = self.sizes
        if key in sizes or len(sizes) < self.capacity:
            sizes[key] = size
            return
        smallest = min(sizes, key=sizes.__getitem__)
        if size > sizes[smallest]:
            del sizes[smallest]
            sizes[key] = size

    def forget(self, key: bytes) -> None:
        self.sizes.pop(key, None)


class KeySampler:
    """What a namespace's sampled operations say: hot keys, big keys, and its ops/s clock."""

    def __init__(self, every: int = SAMPLE_EVERY) -> None:
        self.every = every
        self.hot = SpaceSaving()
        self.big = BigKeys()
        self.rates: deque[tuple[float, int]] = deque()
        self.decayed_at: float | None = None

    def next_gap(self) -> int:
        # random gaps, so a workload with a period of ``every`` ops is not sampled on one key only
        return random.randint(1, 2 * self.every - 1)

    def offer(self, key: bytes, size: int) -> None:
        self.hot.offer(key)
        if size:
            self.big.offer(key, size)

    def hot_keys(self, n: int) -> list[HotKey]:
        return [HotKey(key, count * self.every, error * self.every) for key, count, error in self.hot.top(n)]

    def tick(self, now: float, ops: int) -> None:
        """Called about ten times a second: keeps one (time, ops) point a second, decays the counts."""
        if not self.rates or now - self.rates[-1][0] >= 1.0:
            self.rates.append((now, ops))
            while len(self.rates) > 2 and now - self.rates[0][0] > RATE_WINDOW:
                self.rates.popleft()
        if self.decayed_at is None:
            self.decayed_at = now
        elif now - self.decayed_at >= DECAY_EVERY:
            self.decayed_at = now
            self.hot.decay()

    def ops_per_second(self, now: float, ops: int) -> float | None:
        """Operations a second over the last ``RATE_WINDOW`` seconds; None before a second has passed."""
        if not self.rates:
            return None
        then, before = self.rates[0]
        if now - then < 1.0:
            return None
        return (ops - before) / (now - then)
