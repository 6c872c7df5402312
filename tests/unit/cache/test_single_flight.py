"""The SDK's single flight: one load per key, and a cancelled caller never cancels the others' load."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mezzo.sdk.cache_patterns import _single_flight


class Flights:
    def __init__(self) -> None:
        self._flights: dict[tuple[str, str], asyncio.Future[Any]] = {}


async def test_a_cancelled_first_caller_leaves_the_load_to_the_others() -> None:
    cache, calls, gate = Flights(), 0, asyncio.Event()

    async def work() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return b"v"

    first = asyncio.create_task(_single_flight(cache, ("ns", "k"), work))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    second = asyncio.create_task(_single_flight(cache, ("ns", "k"), work))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    first.cancel()  # say its HTTP request went away
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == b"v" and calls == 1
    assert cache._flights == {}  # the flight is over: the next call loads again


async def test_a_failed_load_reaches_every_caller_once() -> None:
    cache = Flights()

    async def work() -> bytes:
        await asyncio.sleep(0)
        raise LookupError("no such row")

    results = await asyncio.gather(*(_single_flight(cache, ("ns", "k"), work) for _ in range(3)),  # type: ignore[arg-type]
                                   return_exceptions=True)
    assert [type(r) for r in results] == [LookupError] * 3 and cache._flights == {}
