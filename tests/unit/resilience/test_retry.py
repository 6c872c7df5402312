import pytest
from hypothesis import given
from hypothesis import strategies as st

from mezzo.resilience import Retry

from .fakes import FakeSleep, Flaky


def policy(sleep: FakeSleep, **options: object) -> Retry:
    return Retry(sleep=sleep, clock=sleep.clock, **options)  # type: ignore[arg-type]


async def test_retries_until_success_with_exponential_delays() -> None:
    sleep = FakeSleep()
    fn = Flaky(OSError("1"), OSError("2"), OSError("3"), result=42)
    retry = policy(sleep, max_attempts=5, initial_delay=0.1, multiplier=2.0)
    assert await retry.call(fn) == 42
    assert fn.calls == 4
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4])


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    sleep = FakeSleep()
    fn = Flaky(OSError("1"), OSError("2"), OSError("3"))
    with pytest.raises(OSError, match="3"):
        await policy(sleep, max_attempts=3).call(fn)
    assert fn.calls == 3
    assert len(sleep.delays) == 2


async def test_passes_arguments_through() -> None:
    async def add(a: int, b: int = 0) -> int:
        return a + b

    assert await Retry(sleep=FakeSleep()).call(add, 2, b=3) == 5


async def test_errors_outside_retry_on_are_not_retried() -> None:
    sleep = FakeSleep()
    fn = Flaky(KeyError("no"))
    with pytest.raises(KeyError):
        await policy(sleep, retry_on=(OSError, TimeoutError)).call(fn)
    assert fn.calls == 1 and sleep.delays == []


async def test_retry_on_accepts_a_predicate() -> None:
    fn = Flaky(ValueError("transient"), ValueError("fatal"))
    retry = policy(FakeSleep(), retry_on=lambda exc: "transient" in str(exc))
    with pytest.raises(ValueError, match="fatal"):
        await retry.call(fn)
    assert fn.calls == 2


async def test_delays_are_capped_at_max_delay() -> None:
    sleep = FakeSleep()
    fn = Flaky(*(OSError() for _ in range(5)))
    await policy(sleep, max_attempts=None, initial_delay=1, multiplier=3, max_delay=5).call(fn)
    assert sleep.delays == [1, 3, 5, 5, 5]


def test_full_jitter_scales_by_the_random_draw() -> None:
    retry = Retry(initial_delay=2, jitter="full", random=lambda: 0.25)
    assert retry.backoff(1) == pytest.approx(0.5)


def test_proportional_jitter_spreads_around_the_delay_and_respects_the_cap() -> None:
    low = Retry(initial_delay=2, jitter="proportional", jitter_ratio=0.5, random=lambda: 0.0)
    high = Retry(initial_delay=2, max_delay=2.5, jitter="proportional", random=lambda: 0.999)
    assert low.backoff(1) == pytest.approx(1.0)
    assert high.backoff(1) == 2.5


async def test_max_duration_stops_retrying_before_the_budget_is_spent() -> None:
    sleep = FakeSleep()
    fn = Flaky(*(OSError(str(i)) for i in range(10)))
    retry = policy(sleep, max_attempts=None, initial_delay=1, multiplier=2, max_duration=10)
    with pytest.raises(OSError, match="3"):
        await retry.call(fn)
    assert sleep.delays == [1, 2, 4]  # the next delay (8) would end past 10s


async def test_constant_policy_waits_the_same_and_minus_one_retries_forever() -> None:
    sleep = FakeSleep()
    fn = Flaky(*(OSError() for _ in range(50)), result="finally")
    retry = Retry.constant(0.25, max_retries=-1, sleep=sleep, clock=sleep.clock)
    assert await retry.call(fn) == "finally"
    assert sleep.delays == [0.25] * 50


async def test_constant_policy_with_zero_retries_calls_once() -> None:
    fn = Flaky(OSError())
    with pytest.raises(OSError):
        await Retry.constant(1, max_retries=0, sleep=FakeSleep()).call(fn)
    assert fn.calls == 1


def test_exponential_policy_follows_dapr_shape() -> None:
    retry = Retry.exponential(0.5, max_delay=60, max_retries=5, random=lambda: 0.5)
    assert retry.max_attempts == 6
    assert [retry.backoff(n) for n in (1, 2, 3)] == pytest.approx([0.5, 0.75, 1.125])


async def test_on_retry_sees_each_failure_and_delay() -> None:
    seen: list[tuple[int, str, float]] = []
    fn = Flaky(OSError("a"), OSError("b"))
    retry = Retry(
        initial_delay=1, sleep=FakeSleep(), on_retry=lambda n, exc, d: seen.append((n, str(exc), d))
    )
    await retry.call(fn)
    assert seen == [(1, "a", 1.0), (2, "b", 2.0)]


async def test_attempts_loop_retries_the_block() -> None:
    sleep = FakeSleep()
    fn = Flaky(OSError(), OSError(), result="ok")
    results = []
    async for attempt in policy(sleep, max_attempts=5).attempts():
        with attempt:
            results.append(await fn())
    assert results == ["ok"] and fn.calls == 3 and len(sleep.delays) == 2


async def test_attempts_loop_reraises_when_exhausted() -> None:
    fn = Flaky(OSError("1"), OSError("2"))
    with pytest.raises(OSError, match="2"):
        async for attempt in policy(FakeSleep(), max_attempts=2).attempts():
            with attempt:
                await fn()


async def test_attempts_loop_lets_non_retryable_errors_out_at_once() -> None:
    fn = Flaky(KeyError("x"))
    with pytest.raises(KeyError):
        async for attempt in policy(FakeSleep(), retry_on=OSError).attempts():
            with attempt:
                await fn()
    assert fn.calls == 1


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"initial_delay": -1}, {"multiplier": 0.5}, {"jitter_ratio": 2}],
)
def test_invalid_settings_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Retry(**options)  # type: ignore[arg-type]


@given(
    initial=st.floats(0, 100),
    max_delay=st.floats(0, 100),
    multiplier=st.floats(1, 10),
    jitter=st.sampled_from(["none", "full", "proportional"]),
    draw=st.floats(0, 1, exclude_max=True),
    retry_number=st.integers(1, 100_000),
)
def test_backoff_is_never_negative_nor_above_max_delay(
    initial: float, max_delay: float, multiplier: float, jitter: str, draw: float, retry_number: int
) -> None:
    retry = Retry(
        initial_delay=initial,
        max_delay=max_delay,
        multiplier=multiplier,
        jitter=jitter,
        random=lambda: draw,  # type: ignore[arg-type]
    )
    assert 0 <= retry.backoff(retry_number) <= max_delay
