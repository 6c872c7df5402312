"""The embedded broker's partition cursor: queues and heaps that must decide exactly what a scan would."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from mezzo.messaging.backends.embedded.cursor import PartitionCursor, StaleReceipt


@dataclass
class _ScanEntry:
    offset: int
    key: str | None
    attempts: int = 0
    visible_at: float = 0.0
    deadline: float | None = None


class ScanCursor:
    """The reference: every take scans all loaded entries in offset order (the cursor's first version)."""

    def __init__(self) -> None:
        self.entries: dict[int, _ScanEntry] = {}
        self.in_flight_keys: dict[str, int] = {}

    def load(self, records: list[tuple[int, str | None]]) -> None:
        for offset, key in records:
            self.entries[offset] = _ScanEntry(offset, key)

    def take(self, now: float, max_messages: int, ack_timeout: float) -> list[int]:
        out: list[int] = []
        blocked: set[str] = set()
        for entry in self.entries.values():
            if entry.deadline is not None:
                if entry.deadline > now:
                    if entry.key is not None:
                        blocked.add(entry.key)
                    continue
                self._release(entry)
            if entry.key is not None and entry.key in blocked:
                continue
            if entry.visible_at > now:
                if entry.key is not None:
                    blocked.add(entry.key)
                continue
            entry.attempts += 1
            entry.deadline = now + ack_timeout
            if entry.key is not None:
                self.in_flight_keys[entry.key] = entry.offset
                blocked.add(entry.key)
            out.append(entry.offset)
            if len(out) >= max_messages:
                break
        return out

    def next_wakeup(self, now: float) -> float | None:
        times = [e.deadline if e.deadline is not None else e.visible_at for e in self.entries.values()]
        future = [t for t in times if t > now]
        return min(future) if future else None

    def in_flight(self, offset: int) -> bool:
        entry = self.entries.get(offset)
        return entry is not None and entry.deadline is not None

    def finish(self, offset: int) -> None:
        entry = self.entries.pop(offset, None)
        if entry is not None:
            self._release(entry)

    def nack(self, offset: int, visible_at: float) -> None:
        entry = self.entries[offset]
        self._release(entry)
        entry.visible_at = visible_at

    def _release(self, entry: _ScanEntry) -> None:
        entry.deadline = None
        if entry.key is not None and self.in_flight_keys.get(entry.key) == entry.offset:
            del self.in_flight_keys[entry.key]


def _load(cursor: PartitionCursor, records: list[tuple[int, str | None]]) -> None:
    cursor.load([(offset, key, None) for offset, key in records])


def _offsets(entries: list) -> list[int]:  # type: ignore[type-arg]
    return [e.offset for e in entries]


def _flying(fast: PartitionCursor, scan: ScanCursor) -> list[int]:
    # A scan releases an expired delivery only when it passes it; the cursor at its next take.
    # Acks in between are the consumer's race with its ack timeout: both answers are right.
    return [o for o in scan.entries if scan.in_flight(o) and fast.entries[o].deadline is not None]


@pytest.mark.parametrize("seed", range(40))
def test_decides_exactly_what_a_full_scan_decides(seed: int) -> None:
    rng = random.Random(seed)
    keys = [None, None, "a", "b", "c"][: rng.randint(1, 5)]
    fast, scan = PartitionCursor(), ScanCursor()
    now, next_offset = 100.0, 0
    for _ in range(400):
        op = rng.random()
        if op < 0.2:  # the log grows and the broker loads what is new
            records = [(next_offset + i, rng.choice(keys)) for i in range(rng.randint(1, 8))]
            next_offset += len(records)
            _load(fast, records)
            scan.load(records)
        elif op < 0.45:
            want, timeout = rng.randint(1, 6), rng.choice([1.0, 5.0])
            taken = scan.take(now, want, timeout)
            assert _offsets(fast.take(now, want, timeout)) == taken
            if len(taken) < want:  # what a fetch that found too little waits for
                assert fast.next_wakeup(now) == scan.next_wakeup(now)
        elif op < 0.7:  # ack something in flight
            flying = _flying(fast, scan)
            if flying:
                offset = rng.choice(flying)
                fast.ack(offset, fast.entries[offset].attempts)
                scan.finish(offset)
        elif op < 0.8:  # nack something in flight, now or later
            flying = _flying(fast, scan)
            if flying:
                offset = rng.choice(flying)
                visible_at = now + rng.choice([0.0, 0.5, 3.0])
                fast.nack(offset, fast.entries[offset].attempts, visible_at)
                scan.nack(offset, visible_at)
        else:
            now += rng.choice([0.1, 0.7, 2.0])
        assert set(fast.entries) == set(scan.entries)


def test_one_message_per_key_in_flight_and_the_next_after_the_ack() -> None:
    cursor = PartitionCursor()
    _load(cursor, [(0, "k"), (1, "k"), (2, None), (3, "j"), (4, "k")])
    first = cursor.take(0.0, 10, 30.0)
    assert _offsets(first) == [0, 2, 3]
    assert cursor.take(0.0, 10, 30.0) == []
    assert cursor.next_wakeup(0.0) == 30.0  # the held messages need an ack, not a timer
    assert cursor.finish(0) is True  # offset 1 may go now
    assert _offsets(cursor.take(0.0, 10, 30.0)) == [1]
    cursor.finish(1)
    assert _offsets(cursor.take(0.0, 10, 30.0)) == [4]


def test_a_timed_out_delivery_comes_back_first_and_keeps_its_key() -> None:
    cursor = PartitionCursor()
    _load(cursor, [(0, "k"), (1, "k"), (2, None)])
    assert _offsets(cursor.take(0.0, 1, 5.0)) == [0]
    _load(cursor, [(3, None)])
    assert _offsets(cursor.take(6.0, 10, 5.0)) == [0, 2, 3]  # 0 timed out: redelivered in offset order
    assert cursor.entries[0].attempts == 2
    with pytest.raises(StaleReceipt):
        cursor.check(0, 1)


def test_a_nacked_message_waits_for_its_delay_and_holds_its_key() -> None:
    cursor = PartitionCursor()
    _load(cursor, [(0, "k"), (1, "k")])
    [entry] = cursor.take(0.0, 10, 30.0)
    cursor.nack(0, entry.attempts, 2.0)
    assert cursor.take(1.0, 10, 30.0) == []
    assert cursor.next_wakeup(1.0) == 2.0
    assert cursor.next_wakeup(2.5) == 2.5  # due since: wake at once
    assert _offsets(cursor.take(2.5, 10, 30.0)) == [0]


def test_retention_skips_ahead_and_passes_the_key_on() -> None:
    cursor = PartitionCursor()
    _load(cursor, [(0, "k"), (1, None), (2, "k"), (3, "k")])
    assert _offsets(cursor.take(0.0, 10, 30.0)) == [0, 1]
    cursor.finish(1)
    assert cursor.skip_to(3) == 2  # 0 (in flight) and 2 (held) were never acked; 1 was
    assert cursor.committed == 3 and set(cursor.entries) == {3}
    assert _offsets(cursor.take(0.0, 10, 30.0)) == [3]


def test_seek_forgets_everything_and_bumps_the_epoch() -> None:
    cursor = PartitionCursor()
    _load(cursor, [(0, "k"), (1, "k")])
    cursor.take(0.0, 10, 30.0)
    cursor.seek(0)
    assert cursor.epoch == 1 and cursor.entries == {} and cursor.next_wakeup(0.0) is None
    _load(cursor, [(0, "k"), (1, "k")])
    assert _offsets(cursor.take(0.0, 10, 30.0)) == [0]


def test_out_of_order_acks_advance_committed_once_the_gap_closes() -> None:
    cursor = PartitionCursor()
    _load(cursor, [(i, None) for i in range(4)])
    taken = cursor.take(0.0, 10, 30.0)
    for entry in reversed(taken[1:]):
        cursor.ack(entry.offset, entry.attempts)
    assert cursor.committed == 0 and cursor.done == {1, 2, 3}
    cursor.ack(0, 1)
    assert cursor.committed == 4 and cursor.done == set() and cursor.lag(4) == 0


def test_timers_of_finished_deliveries_do_not_pile_up() -> None:
    cursor = PartitionCursor()
    _load(cursor, [(i, None) for i in range(5000)])
    for _ in range(1000):  # deliver five, ack them; their deadlines stay queued until they come up
        for entry in cursor.take(0.0, 5, 30.0):
            cursor.ack(entry.offset, entry.attempts)
    assert len(cursor.deadlines) <= 2 * len(cursor.entries) + 64 + 5
    _load(cursor, [(5000 + i, "k") for i in range(3)])
    for i in range(1000):  # a message nacked again and again
        taken = cursor.take(float(i), 1, 30.0)
        cursor.nack(taken[0].offset, taken[0].attempts, float(i))
    assert len(cursor.delayed) <= 2 * len(cursor.entries) + 64 + 1
    assert _offsets(cursor.take(2000.0, 10, 30.0)) == [5000]  # and it still comes back, holding its key
