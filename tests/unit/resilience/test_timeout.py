import asyncio

import pytest

from mezzo.resilience import TimeoutExceeded, deadline, with_timeout


async def test_returns_the_result_within_the_limit() -> None:
    async def quick() -> int:
        return 7

    assert await with_timeout(quick(), 1.0) == 7
    assert await with_timeout(quick, 1.0) == 7  # a function returning an awaitable works too


async def test_expiry_raises_timeout_exceeded_with_the_limit() -> None:
    with pytest.raises(TimeoutExceeded) as caught:
        await with_timeout(asyncio.Event().wait(), 0.005)
    assert caught.value.seconds == 0.005
    assert isinstance(caught.value, TimeoutError)


async def test_a_timeout_error_from_the_call_itself_passes_through() -> None:
    async def fails() -> None:
        raise TimeoutError("from the callee")

    with pytest.raises(TimeoutError, match="from the callee") as caught:
        await with_timeout(fails(), 10)
    assert not isinstance(caught.value, TimeoutExceeded)


async def test_none_means_no_limit() -> None:
    async def value() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await with_timeout(value(), None) == "done"


async def test_nested_deadlines_report_the_scope_that_expired() -> None:
    with pytest.raises(TimeoutExceeded) as caught:
        async with deadline(10):
            async with deadline(0.005):
                await asyncio.Event().wait()
    assert caught.value.seconds == 0.005


@pytest.mark.parametrize("seconds", [0, -1])
async def test_non_positive_limits_are_rejected(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        await with_timeout(asyncio.sleep(0), seconds)
