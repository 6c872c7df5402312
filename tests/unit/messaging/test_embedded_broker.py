"""The embedded broker's consumer side: batched journal entries, receipts, reading only what a fetch needs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mezzo.messaging.backend import Record, StaleReceiptError
from mezzo.messaging.backends.embedded.broker import LOAD_AT_LEAST, EmbeddedBroker, GroupState
from mezzo.messaging.model import TopicSpec

T = "default/t"


async def _broker(path: Path, partitions: int = 1) -> EmbeddedBroker:
    b = EmbeddedBroker(path)
    await b.open()
    await b.ensure_topic(T, TopicSpec(partitions=partitions))
    return b


def _recs(n: int, key: str | None = None) -> list[Record]:
    return [Record(f"m{i}", b"payload-%d" % i, key, int(time.time() * 1000)) for i in range(n)]


async def _settled(b: EmbeddedBroker) -> None:
    """Wait for the attempt counts a fetch journals in the background."""
    for group in b._topics[T].groups.values():
        await asyncio.gather(*group._background)


def test_journal_replays_batched_and_single_entries(tmp_path: Path) -> None:
    state = GroupState(tmp_path, 2, "batch")
    for entry in (["a", 0, [0, 1, 3]], ["d", 0, [2, 4], [2, 5]], ["A", 1, 0], ["D", 1, 2, 3], ["a", 0, [2]]):
        state._replay(entry)
    first, second = state.cursors
    assert (first.committed, first.done, first.attempts) == (4, set(), {4: 5})
    assert (second.committed, second.attempts) == (1, {2: 3})


async def test_acks_and_attempts_survive_a_crash(tmp_path: Path) -> None:
    b = await _broker(tmp_path)
    await b.publish(T, _recs(30), [0] * 30)
    got = await b.fetch(T, "g", 30, 0, 30)
    await b.ack(T, "g", [d.receipt for d in got[:10]])
    await _settled(b)
    again = EmbeddedBroker(tmp_path)  # no close(): as after a kill
    await again.open()
    try:
        assert again._topics[T].groups["g"].cursors[0].committed == 10
        redelivered = await again.fetch(T, "g", 100, 0, 30)
        assert [d.offset for d in redelivered] == list(range(10, 30))
        assert {d.attempt for d in redelivered} == {2}
        assert [d.payload for d in redelivered] == [b"payload-%d" % i for i in range(10, 30)]
        with pytest.raises(StaleReceiptError):  # receipts do not outlive the process that gave them
            await again.ack(T, "g", [got[10].receipt])
    finally:
        await again.close()
        await b.close()


async def test_a_receipt_ends_with_its_delivery(tmp_path: Path) -> None:
    b = await _broker(tmp_path)
    try:
        await b.publish(T, _recs(2), [0, 0])
        first = await b.fetch(T, "g", 2, 0, 0.05)
        await asyncio.sleep(0.1)  # the ack timeout passes: both come back
        second = await b.fetch(T, "g", 2, 0, 30)
        assert [d.attempt for d in second] == [2, 2]
        with pytest.raises(StaleReceiptError):
            await b.ack(T, "g", [first[0].receipt])
        gstate = b._topics[T].groups["g"]
        assert set(gstate.flying) == {d.receipt for d in second}  # the old receipts are gone
        await b.nack(T, "g", [second[0].receipt], 0)
        await b.ack(T, "g", [second[1].receipt])
        assert gstate.flying == {}
        [third] = await b.fetch(T, "g", 2, 0, 30)
        assert (third.offset, third.attempt) == (0, 3)
    finally:
        await b.close()


async def test_a_fetch_reads_only_what_it_needs(tmp_path: Path) -> None:
    b = await _broker(tmp_path)
    try:
        await b.publish(T, _recs(5000), [0] * 5000)
        assert len(await b.fetch(T, "g", 10, 0, 30)) == 10
        cursor = b._topics[T].groups["g"].cursors[0]
        assert cursor.read_pos <= 10 + LOAD_AT_LEAST
    finally:
        await b.close()


async def test_messages_behind_a_busy_key_are_read_until_something_else_can_go(tmp_path: Path) -> None:
    b = await _broker(tmp_path)
    try:
        await b.publish(T, [*_recs(500, key="k"), Record("free", b"x", None, 0)], [0] * 501)
        assert [d.offset for d in await b.fetch(T, "g", 10, 0, 30)] == [0, 500]
        assert await b.fetch(T, "g", 10, 0, 30) == []
    finally:
        await b.close()


async def test_acks_across_partitions_commit_each(tmp_path: Path) -> None:
    b = await _broker(tmp_path, partitions=3)
    try:
        await b.publish(T, _recs(30), [i % 3 for i in range(30)])
        got = await b.fetch(T, "g", 30, 0, 30)
        assert len(got) == 30
        await b.ack(T, "g", [d.receipt for d in got])
        stats = await b.group_stats(T, "g")
        assert stats.lag == 0 and stats.in_flight == 0
        assert {p: v["committed"] for p, v in stats.partitions.items()} == {0: 10, 1: 10, 2: 10}
    finally:
        await b.close()


async def test_attempt_counts_reach_the_journal_without_an_ack(tmp_path: Path) -> None:
    b = await _broker(tmp_path)
    await b.publish(T, _recs(3), [0] * 3)
    await b.fetch(T, "g", 3, 0, 30)
    await _settled(b)  # no ack follows: they are written on their own shortly
    again = EmbeddedBroker(tmp_path)
    await again.open()
    try:
        assert [d.attempt for d in await again.fetch(T, "g", 3, 0, 30)] == [2, 2, 2]
    finally:
        await again.close()
        await b.close()
