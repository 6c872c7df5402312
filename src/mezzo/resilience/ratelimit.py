"""In-process rate limiters (token bucket, fixed window, sliding window), keyed, with bounded memory."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

S = TypeVar("S")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """The verdict for one request, with what an HTTP layer needs for its headers.

    ``remaining``: requests still allowed now. ``reset_after``: seconds until the limiter for
    this key is fully replenished. ``retry_after``: seconds until a request of the same cost
    could pass (``0.0`` when allowed).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float = 0.0

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` headers, plus ``Retry-After`` (whole seconds, at least 1) when denied."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class RateLimiter(Protocol):
    """What the gateway and services call; local and Redis limiters both satisfy it."""

    async def acquire(self, key: str, cost: int = 1) -> RateLimitDecision: ...


class _Keyed(Generic[S]):
    """Per-key state in LRU order, at most ``max_keys`` entries.

    A key is *idle* when its state equals a fresh key's (bucket full, windows over), so
    dropping it changes no decision; ``sweep()`` drops those. When the map is full the least
    recently used key is dropped; that key is idle in any sensible configuration.
    """

    def __init__(self, limit: int, max_keys: int, clock: Clock) -> None:
        if limit < 1:
            raise ValueError("a rate limit must allow at least 1 request")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.limit = limit
        self.max_keys = max_keys
        self._clock = clock
        self._states: OrderedDict[str, S] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def try_acquire(self, key: str, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units for ``key`` now if the limit allows; never waits."""
        if not 1 <= cost <= self.limit:
            raise ValueError(f"cost must be between 1 and the limit ({self.limit})")
        now = self._clock()
        state = self._states.get(key)
        if state is None:
            state = self._fresh(now)
            self._states[key] = state
            if len(self._states) > self.max_keys:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return self._decide(state, now, cost)

    async def acquire(self, key: str, cost: int = 1) -> RateLimitDecision:
        return self.try_acquire(key, cost)

    def sweep(self) -> int:
        """Drop every idle key; returns how many went. Call it from a periodic task."""
        now = self._clock()
        idle = [key for key, state in self._states.items() if self._idle(state, now)]
        for key in idle:
            del self._states[key]
        return len(idle)

    def _fresh(self, now: float) -> S:
        raise NotImplementedError

    def _decide(self, state: S, now: float, cost: int) -> RateLimitDecision:
        raise NotImplementedError

    def _idle(self, state: S, now: float) -> bool:
        raise NotImplementedError


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class TokenBucket(_Keyed[_Bucket]):
    """Holds up to ``burst`` tokens, refilled at ``rate`` per second; a request takes ``cost``."""

    def __init__(
        self, rate: float, burst: int, *, max_keys: int = 100_000, clock: Clock = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        super().__init__(burst, max_keys, clock)
        self.rate = rate

    def _fresh(self, now: float) -> _Bucket:
        return _Bucket(float(self.limit), now)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        if now > bucket.updated:
            bucket.tokens = min(
                float(self.limit), bucket.tokens + (now - bucket.updated) * self.rate
            )
            bucket.updated = now

    def _decide(self, bucket: _Bucket, now: float, cost: int) -> RateLimitDecision:
        self._refill(bucket, now)
        allowed = bucket.tokens >= cost
        if allowed:
            bucket.tokens -= cost
        retry_after = 0.0 if allowed else (cost - bucket.tokens) / self.rate
        reset_after = (self.limit - bucket.tokens) / self.rate
        return RateLimitDecision(allowed, self.limit, int(bucket.tokens), reset_after, retry_after)

    def _idle(self, bucket: _Bucket, now: float) -> bool:
        self._refill(bucket, now)
        return bucket.tokens >= self.limit


class _Counts:
    __slots__ = ("current", "previous", "window")

    def __init__(self, window: int) -> None:
        self.window = window  # index of the current window: floor(now / length)
        self.current = 0
        self.previous = 0

    def roll(self, window: int) -> None:
        if window != self.window:
            self.previous = self.current if window == self.window + 1 else 0
            self.current = 0
            self.window = window


class FixedWindow(_Keyed[_Counts]):
    """At most ``limit`` units per key in each window ``[k * window, (k + 1) * window)`` of the clock."""

    def __init__(
        self, limit: int, window: float, *, max_keys: int = 100_000, clock: Clock = time.monotonic
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        super().__init__(limit, max_keys, clock)
        self.window = window

    def _fresh(self, now: float) -> _Counts:
        return _Counts(int(now // self.window))

    def _decide(self, counts: _Counts, now: float, cost: int) -> RateLimitDecision:
        counts.roll(int(now // self.window))
        ends_in = (counts.window + 1) * self.window - now
        allowed = counts.current + cost <= self.limit
        if allowed:
            counts.current += cost
        return RateLimitDecision(
            allowed, self.limit, self.limit - counts.current, ends_in, 0.0 if allowed else ends_in
        )

    def _idle(self, counts: _Counts, now: float) -> bool:
        counts.roll(int(now // self.window))
        return counts.current == 0


class SlidingWindow(_Keyed[_Counts]):
    """Weighted two-window counter: a cheap approximation of a sliding window.

    The estimate is ``previous * (1 - elapsed / window) + current``, where ``elapsed`` is the
    time into the current fixed window; a request passes if ``estimate + cost <= limit``.
    Memory is two counters per key. It assumes the previous window's requests were spread
    evenly, so any window-long span may see up to ``2 * limit`` in the worst case, while each
    fixed window never exceeds ``limit``; it avoids the burst of a fixed window at a boundary.
    """

    def __init__(
        self, limit: int, window: float, *, max_keys: int = 100_000, clock: Clock = time.monotonic
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        super().__init__(limit, max_keys, clock)
        self.window = window

    def _fresh(self, now: float) -> _Counts:
        return _Counts(int(now // self.window))

    def _decide(self, counts: _Counts, now: float, cost: int) -> RateLimitDecision:
        counts.roll(int(now // self.window))
        elapsed = now - counts.window * self.window
        return _sliding_decision(self.limit, self.window, counts, elapsed, cost)

    def _idle(self, counts: _Counts, now: float) -> bool:
        counts.roll(int(now // self.window))
        return counts.current == 0 and counts.previous == 0


def _sliding_decision(
    limit: int, window: float, counts: _Counts, elapsed: float, cost: int
) -> RateLimitDecision:
    """Decide (and count, if allowed) one request of a weighted two-window counter."""
    weight = 1.0 - elapsed / window
    estimate = counts.previous * weight + counts.current
    allowed = estimate + cost <= limit
    if allowed:
        counts.current += cost
        estimate += cost
    to_window_end = window - elapsed
    if counts.current:
        reset_after = to_window_end + window  # the current count fades out over the next window
    else:
        reset_after = to_window_end if counts.previous else 0.0
    retry_after = 0.0
    if not allowed:
        room = limit - cost - counts.current  # what the previous window may still weigh
        if counts.previous and room >= 0:
            retry_after = window * (1 - room / counts.previous) - elapsed
        else:  # wait for the next window, where today's count becomes the previous one
            retry_after = to_window_end + window * max(0.0, 1 - (limit - cost) / counts.current)
    return RateLimitDecision(
        allowed, limit, max(0, math.floor(limit - estimate)), reset_after, retry_after
    )
