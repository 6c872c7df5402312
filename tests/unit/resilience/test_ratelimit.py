import pytest
from hypothesis import given
from hypothesis import strategies as st

from mezzo.resilience import FixedWindow, RateLimitDecision, SlidingWindow, TokenBucket

from .fakes import FakeClock


def test_token_bucket_allows_a_burst_then_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.try_acquire("k").remaining for _ in range(3)] == [2, 1, 0]
    denied = bucket.try_acquire("k")
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.5)
    assert denied.reset_after == pytest.approx(1.5)
    clock.advance(0.5)
    assert bucket.try_acquire("k").allowed
    assert not bucket.try_acquire("k").allowed


def test_token_bucket_cost_takes_several_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=5, clock=clock)
    assert bucket.try_acquire("k", cost=4).remaining == 1
    denied = bucket.try_acquire("k", cost=3)
    assert not denied.allowed and denied.retry_after == pytest.approx(2)
    with pytest.raises(ValueError, match="cost"):
        bucket.try_acquire("k", cost=6)


def test_keys_are_limited_independently() -> None:
    bucket = TokenBucket(rate=1, burst=1, clock=FakeClock())
    assert bucket.try_acquire("alice").allowed
    assert not bucket.try_acquire("alice").allowed
    assert bucket.try_acquire("bob").allowed


def test_fixed_window_resets_at_the_window_boundary() -> None:
    clock = FakeClock(1000.0)
    limiter = FixedWindow(limit=2, window=10, clock=clock)
    clock.advance(4)  # 6 seconds left in the window [1000, 1010)
    assert limiter.try_acquire("k").remaining == 1
    assert limiter.try_acquire("k").reset_after == pytest.approx(6)
    denied = limiter.try_acquire("k")
    assert (denied.allowed, denied.remaining) == (False, 0)
    assert denied.retry_after == pytest.approx(6)
    clock.advance(6)
    assert limiter.try_acquire("k").remaining == 1


def test_sliding_window_weighs_the_previous_window() -> None:
    clock = FakeClock(1000.0)
    limiter = SlidingWindow(limit=10, window=10, clock=clock)
    for _ in range(10):
        assert limiter.try_acquire("k").allowed
    clock.advance(12.5)  # a quarter into the next window: previous weighs 0.75 * 10 = 7.5
    allowed = [limiter.try_acquire("k").allowed for _ in range(3)]
    assert allowed == [True, True, False]
    denied = limiter.try_acquire("k")
    # 7.5 + 2 + 1 > 10 until the previous weight drops to 7: 0.3 into the window.
    assert denied.retry_after == pytest.approx(0.5)
    assert denied.reset_after == pytest.approx(17.5)


def test_decision_headers_for_an_http_layer() -> None:
    assert RateLimitDecision(True, 10, 3, 4.2).headers() == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "3",
        "X-RateLimit-Reset": "5",
    }
    denied = RateLimitDecision(False, 10, 0, 0.4, 0.2).headers()
    assert denied["Retry-After"] == "1"


def test_memory_is_bounded_by_evicting_the_least_recently_used_key() -> None:
    bucket = TokenBucket(rate=1, burst=1, max_keys=2, clock=FakeClock())
    for key in ("a", "b", "a", "c"):
        bucket.try_acquire(key)
    assert len(bucket) == 2
    assert not bucket.try_acquire("a").allowed  # "a" was kept: "b" was the oldest


def test_sweep_drops_only_idle_keys() -> None:
    clock = FakeClock()
    limiter = FixedWindow(limit=5, window=10, clock=clock)
    limiter.try_acquire("old")
    clock.advance(10)
    limiter.try_acquire("new")
    assert limiter.sweep() == 1
    assert len(limiter) == 1
    assert limiter.try_acquire("new").remaining == 3


async def test_acquire_is_the_async_face_of_try_acquire() -> None:
    limiter = SlidingWindow(limit=1, window=1, clock=FakeClock())
    assert (await limiter.acquire("k")).allowed
    assert not (await limiter.acquire("k")).allowed


@pytest.mark.parametrize(
    "make",
    [
        lambda: TokenBucket(rate=0, burst=1),
        lambda: TokenBucket(rate=1, burst=0),
        lambda: FixedWindow(limit=1, window=0),
        lambda: SlidingWindow(limit=1, window=-1),
        lambda: FixedWindow(limit=1, window=1, max_keys=0),
    ],
)
def test_bad_settings_are_rejected(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


steps = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 4)), min_size=1, max_size=200
)


@given(rate=st.floats(0.1, 50), burst=st.integers(4, 20), steps=steps)
def test_token_bucket_never_exceeds_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    start, allowed = clock(), 0
    for dt, cost in steps:
        clock.advance(dt)
        if bucket.try_acquire("k", cost).allowed:
            allowed += cost
        assert allowed <= burst + rate * (clock() - start) + 1e-6


@given(limit=st.integers(4, 20), window=st.floats(0.5, 20), steps=steps)
def test_windows_never_allow_more_than_the_limit_per_fixed_window(
    limit: int, window: float, steps: list[tuple[float, int]]
) -> None:
    for limiter_type in (FixedWindow, SlidingWindow):
        clock = FakeClock()
        limiter = limiter_type(limit=limit, window=window, clock=clock)
        per_window: dict[int, int] = {}
        for dt, cost in steps:
            clock.advance(dt)
            if limiter.try_acquire("k", cost).allowed:
                index = int(clock() // window)
                per_window[index] = per_window.get(index, 0) + cost
        assert max(per_window.values(), default=0) <= limit


@given(limit=st.integers(4, 20), window=st.floats(0.5, 20), steps=steps)
def test_sliding_window_never_allows_twice_the_limit_in_any_span(
    limit: int, window: float, steps: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    limiter = SlidingWindow(limit=limit, window=window, clock=clock)
    granted: list[tuple[float, int]] = []
    for dt, cost in steps:
        clock.advance(dt)
        if limiter.try_acquire("k", cost).allowed:
            granted.append((clock(), cost))
    for start, _ in granted:
        assert sum(c for t, c in granted if start <= t < start + window) <= 2 * limit


@given(kind=st.sampled_from(["token", "fixed", "sliding"]), limit=st.integers(4, 20), steps=steps)
def test_a_denied_request_passes_exactly_after_retry_after(
    kind: str, limit: int, steps: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    limiter = {
        "token": lambda: TokenBucket(rate=limit / 7, burst=limit, clock=clock),
        "fixed": lambda: FixedWindow(limit=limit, window=7, clock=clock),
        "sliding": lambda: SlidingWindow(limit=limit, window=7, clock=clock),
    }[kind]()
    for dt, cost in steps:
        clock.advance(dt)
        decision = limiter.try_acquire("k", cost)
        if not decision.allowed:
            assert decision.retry_after > 0
            early = min(1e-3, decision.retry_after / 2)
            clock.advance(decision.retry_after - early)
            assert not limiter.try_acquire("k", cost).allowed  # retry_after is not too long either
            clock.advance(early + 1e-6)
            assert limiter.try_acquire("k", cost).allowed
