import asyncio

import pytest

from mezzo.resilience import CircuitBreaker, CircuitOpenError, CircuitState, TripCondition

from .fakes import FakeClock


def breaker(clock: FakeClock, **options: object) -> CircuitBreaker:
    return CircuitBreaker("shop", clock=clock, **options)  # type: ignore[arg-type]


async def fail() -> None:
    raise OSError("down")


async def ok() -> str:
    return "ok"


async def fail_times(cb: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(OSError):
            await cb.call(fail)


async def test_trips_after_more_than_n_consecutive_failures() -> None:
    clock = FakeClock()
    cb = breaker(clock, trip="consecutiveFailures > 2", open_duration=30)
    await fail_times(cb, 2)
    assert cb.state is CircuitState.CLOSED
    await fail_times(cb, 1)
    assert cb.state is CircuitState.OPEN
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as caught:
        await cb.call(ok)
    assert caught.value.retry_after == pytest.approx(20)
    assert caught.value.name == "shop"


async def test_a_success_resets_the_consecutive_count() -> None:
    cb = breaker(FakeClock(), trip="consecutiveFailures > 2")
    await fail_times(cb, 2)
    assert await cb.call(ok) == "ok"
    await fail_times(cb, 2)
    assert cb.state is CircuitState.CLOSED
    assert cb.stats().consecutive_failures == 2


async def test_error_ratio_trips_only_after_min_calls() -> None:
    cb = breaker(FakeClock(), trip="errorRatio > 0.5", min_calls=4, window=10)
    await fail_times(cb, 3)
    assert cb.state is CircuitState.CLOSED  # 3 calls: too few to judge
    await cb.call(ok)
    assert cb.state is CircuitState.OPEN  # 3 of 4 failed


async def test_error_ratio_forgets_calls_older_than_the_window() -> None:
    clock = FakeClock()
    cb = breaker(clock, trip="errorRatio > 0.5", min_calls=4, window=10)
    await fail_times(cb, 3)
    clock.advance(11)
    for _ in range(3):
        await cb.call(ok)
    await fail_times(cb, 1)
    assert cb.state is CircuitState.CLOSED  # only 1 of the last 4 failed
    assert cb.stats().window_calls == 4


async def test_slow_call_ratio_counts_slow_successes() -> None:
    clock = FakeClock()
    cb = breaker(clock, trip="slowCallRatio > 0.5", slow_call_duration=1.0, min_calls=2)

    async def slow() -> None:
        clock.advance(2)

    await cb.call(slow)
    assert cb.state is CircuitState.CLOSED
    await cb.call(slow)
    assert cb.state is CircuitState.OPEN


def test_slow_call_ratio_needs_a_duration() -> None:
    with pytest.raises(ValueError, match="slow_call_duration"):
        CircuitBreaker(trip="slowCallRatio > 0.5")


async def test_half_open_admits_n_probes_and_closes_when_they_succeed() -> None:
    clock = FakeClock()
    cb = breaker(clock, trip="consecutiveFailures > 0", open_duration=5, half_open_max_calls=2)
    await fail_times(cb, 1)
    clock.advance(5)
    assert cb.state is CircuitState.HALF_OPEN
    first, second = cb.allow(), cb.allow()
    with pytest.raises(CircuitOpenError) as caught:
        cb.allow()  # both probe slots taken
    assert caught.value.retry_after == 0
    cb.record_success(0.1, first)
    assert cb.state is CircuitState.HALF_OPEN
    cb.record_success(0.1, second)
    assert cb.state is CircuitState.CLOSED


async def test_a_failed_probe_reopens_the_circuit() -> None:
    clock = FakeClock()
    cb = breaker(clock, trip="consecutiveFailures > 0", open_duration=5)
    await fail_times(cb, 1)
    clock.advance(5)
    await fail_times(cb, 1)
    assert cb.state is CircuitState.OPEN
    assert cb.stats().times_opened == 2
    with pytest.raises(CircuitOpenError) as caught:
        cb.allow()
    assert caught.value.retry_after == pytest.approx(5)


async def test_outcomes_of_calls_admitted_before_a_state_change_are_ignored() -> None:
    clock = FakeClock()
    cb = breaker(clock, trip="consecutiveFailures > 0", open_duration=5)
    early = cb.allow()
    await fail_times(cb, 1)
    clock.advance(5)
    probe = cb.allow()
    cb.record_failure(0.0, early)  # a late verdict from the closed era
    assert cb.state is CircuitState.HALF_OPEN
    cb.record_success(0.0, probe)
    assert cb.state is CircuitState.CLOSED


async def test_a_cancelled_probe_gives_its_slot_back() -> None:
    clock = FakeClock()
    cb = breaker(clock, trip="consecutiveFailures > 0", open_duration=5)
    await fail_times(cb, 1)
    clock.advance(5)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(cb.call(hang))
    await started.wait()
    with pytest.raises(CircuitOpenError):
        cb.allow()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await cb.call(ok) == "ok"
    assert cb.state is CircuitState.CLOSED


async def test_errors_outside_failure_on_count_as_answers() -> None:
    cb = breaker(FakeClock(), trip="consecutiveFailures > 0", failure_on=OSError)
    with pytest.raises(KeyError):
        async with cb:
            raise KeyError("not found")
    assert cb.state is CircuitState.CLOSED
    with pytest.raises(OSError):
        async with cb:
            raise OSError("down")
    assert cb.state is CircuitState.OPEN


async def test_nested_use_of_two_breakers_records_each() -> None:
    outer = breaker(FakeClock(), trip="consecutiveFailures > 0")
    inner = CircuitBreaker("inner", trip="consecutiveFailures > 5", clock=FakeClock())
    with pytest.raises(OSError):
        async with outer, inner:
            raise OSError
    assert outer.state is CircuitState.OPEN
    assert inner.stats().consecutive_failures == 1


async def test_state_listener_sees_every_transition_and_cannot_break_calls() -> None:
    clock = FakeClock()
    seen: list[tuple[str, str]] = []

    def listener(cb: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        seen.append((old.value, new.value))
        raise RuntimeError("metrics backend down")

    cb = breaker(clock, trip="consecutiveFailures > 0", open_duration=1, on_state_change=listener)
    await fail_times(cb, 1)
    clock.advance(1)
    await cb.call(ok)
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_stats_and_reset() -> None:
    cb = breaker(FakeClock(), trip="consecutiveFailures > 1")
    await fail_times(cb, 2)
    with pytest.raises(CircuitOpenError):
        await cb.call(ok)
    stats = cb.stats()
    assert (stats.state, stats.times_opened, stats.rejected) == (CircuitState.OPEN, 1, 1)
    cb.reset()
    assert cb.state is CircuitState.CLOSED
    assert await cb.call(ok) == "ok"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("consecutiveFailures > 5", TripCondition(5)),
        ("errorRatio > 0.5", TripCondition(None, 0.5)),
        ("consecutiveFailures>3 || errorRatio > 0.25", TripCondition(3, 0.25)),
        ("errorRatio > 0.5 or slowCallRatio > 0.8", TripCondition(None, 0.5, 0.8)),
    ],
)
def test_trip_expressions_parse(expression: str, expected: TripCondition) -> None:
    assert TripCondition.parse(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("requests > 5", "unsupported trip expression"),
        ("consecutiveFailures >= 5", "unsupported trip expression"),
        ("consecutiveFailures > 5 && errorRatio > 0.5", "unsupported trip expression"),
        ("consecutiveFailures > 1.5", "whole number"),
        ("errorRatio > 1.5", "between 0 and 1"),
        ("errorRatio > 0.1 || errorRatio > 0.2", "twice"),
        ("", "unsupported trip expression"),
    ],
)
def test_bad_trip_expressions_say_why(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TripCondition.parse(expression)
