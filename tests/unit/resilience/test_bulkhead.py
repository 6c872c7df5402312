import asyncio
from collections.abc import Callable

import pytest

from mezzo.resilience import Bulkhead, BulkheadFullError
from mezzo.testing.fixtures import wait_for


class Gate:
    """Calls that block inside the bulkhead until released, recording the order they ran in."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered: list[str] = []

    async def __call__(self, name: str) -> str:
        self.entered.append(name)
        await self.release.wait()
        return name


async def until(condition: Callable[[], bool]) -> None:
    await wait_for(condition, interval=0)  # polls with a deadline; nothing here takes real time


async def test_caps_concurrency_and_runs_the_queue_in_order() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queue=2)
    gate = Gate()
    tasks = [asyncio.create_task(bulkhead.call(gate, name)) for name in "abcd"]
    await until(lambda: bulkhead.active == 2 and bulkhead.queued == 2)
    assert gate.entered == ["a", "b"]
    gate.release.set()
    assert await asyncio.gather(*tasks) == ["a", "b", "c", "d"]
    assert gate.entered == ["a", "b", "c", "d"]
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_rejects_at_once_when_slots_and_queue_are_full() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, name="db")
    gate = Gate()
    tasks = [asyncio.create_task(bulkhead.call(gate, name)) for name in "ab"]
    await until(lambda: bulkhead.queued == 1)
    with pytest.raises(BulkheadFullError, match="queue is full") as caught:
        await bulkhead.call(gate, "c")
    assert caught.value.name == "db"
    assert bulkhead.rejected == 1
    gate.release.set()
    await asyncio.gather(*tasks)


async def test_without_a_queue_a_busy_bulkhead_rejects() -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    async with bulkhead:
        with pytest.raises(BulkheadFullError, match="all slots busy"):
            async with bulkhead:
                pass
    async with bulkhead:  # the slot came back
        assert bulkhead.active == 1


async def test_a_waiter_gives_up_after_the_queue_timeout() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, queue_timeout=0.005)
    async with bulkhead:
        with pytest.raises(BulkheadFullError, match="waited"):
            await bulkhead.acquire()
        assert bulkhead.queued == 0
    assert bulkhead.active == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_leaks_no_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await until(lambda: bulkhead.queued == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.queued == 0
    bulkhead.release()
    assert bulkhead.active == 0


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=2)
    await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await until(lambda: bulkhead.queued == 2)
    bulkhead.release()  # the slot goes to `first`...
    first.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # so `second` gets the slot
    assert bulkhead.active == 1
    bulkhead.release()
    assert bulkhead.active == 0


@pytest.mark.parametrize(
    "options",
    [
        {"max_concurrent": 0},
        {"max_concurrent": 1, "max_queue": -1},
        {"max_concurrent": 1, "queue_timeout": 0},
    ],
)
def test_bad_settings_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Bulkhead(**options)  # type: ignore[arg-type]
