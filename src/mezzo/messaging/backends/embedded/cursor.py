"""One consumer group's progress through one partition: what is done, in flight, or waiting.

Pure logic with an injected clock: the broker feeds it records from the log and
journals what it decides. Offsets below ``committed`` are done; above it,
``done`` holds individually acked offsets (acks may arrive out of order) and
``entries`` the loaded offsets still to deliver or in flight. A key with a
message in flight (or waiting for a retry) holds back later messages of that key.

Nothing here scans the pending window: deliverable offsets wait in queues and
timers in heaps, so the cost of a delivery or an ack does not grow with the number
of messages loaded or in flight.

- ``fresh``: loaded offsets never looked at, in offset order.
- ``ready``: a heap of offsets deliverable again (ack deadline passed, nack delay
  over, or their key just freed); merged with ``fresh`` by offset.
- ``owners``: per key, the earliest unfinished offset of that key that left
  ``fresh``; the key's later offsets wait in ``held`` until it is finished.
- ``deadlines`` and ``delayed``: heaps of ack deadlines and nack delays. Items are
  never removed early; one that no longer matches its entry is skipped when it
  comes up.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from typing import Any


class StaleReceipt(LookupError):
    pass


class Entry:
    __slots__ = ("attempts", "deadline", "key", "offset", "receipt", "record", "visible_at")

    def __init__(self, offset: int, key: str | None, attempts: int = 0) -> None:
        self.offset = offset
        self.key = key
        self.attempts = attempts
        self.visible_at = 0.0  # not delivered before this time (retry backoff, nack delay)
        self.deadline: float | None = None  # in flight until this time
        self.receipt: str | None = None  # of the current (or last) delivery; set by the broker
        self.record: Any = None  # what the broker read from the log, until the first delivery hands it out


class PartitionCursor:
    def __init__(self, committed: int = 0) -> None:
        self.epoch = 0  # bumped by every seek: receipts from before it no longer match
        self.committed = committed
        self.read_pos = committed
        self.entries: dict[int, Entry] = {}
        self.done: set[int] = set()
        self.attempts: dict[int, int] = {}  # restored attempt counts for offsets not yet loaded
        self._reset_queues()

    def _reset_queues(self) -> None:
        self.fresh: deque[int] = deque()
        self.ready: list[int] = []
        self.owners: dict[str, int] = {}
        self.held: dict[str, deque[int]] = {}
        self.deadlines: list[tuple[float, int, int]] = []  # (deadline, offset, attempts)
        self.delayed: list[tuple[float, int]] = []  # (visible_at, offset)

    # feeding -----------------------------------------------------------------------

    def load(self, records: Iterable[tuple[int, str | None, Any]]) -> None:
        """Add ``(offset, key, record)`` read from the log at ``read_pos`` onwards."""
        entries, fresh, attempts, done = self.entries, self.fresh, self.attempts, self.done
        for offset, key, record in records:
            if offset < self.read_pos:
                continue
            self.read_pos = offset + 1
            if offset < self.committed or offset in done:
                if attempts:
                    attempts.pop(offset, None)
                continue
            entry = Entry(offset, key, attempts.pop(offset, 0) if attempts else 0)
            entry.record = record
            entries[offset] = entry
            fresh.append(offset)

    def skip_to(self, first_offset: int) -> int:
        """Retention removed offsets below ``first_offset``; returns how many were never acked."""
        if first_offset <= self.committed:
            return 0
        upto = min(first_offset, self.read_pos)
        lost = max(upto - self.committed, 0) - sum(1 for o in self.done if o < upto)
        for offset in [o for o in self.entries if o < first_offset]:
            self._drop(offset)
        lost += max(first_offset - max(self.read_pos, self.committed), 0)
        self.done = {o for o in self.done if o >= first_offset}
        self.committed = first_offset
        self.read_pos = max(self.read_pos, first_offset)
        return lost

    # delivering --------------------------------------------------------------------

    def take(self, now: float, max_messages: int, ack_timeout: float) -> list[Entry]:
        """Deliver up to ``max_messages`` due entries in offset order, one per key at a time."""
        self._expire(now)
        entries, fresh, ready, owners = self.entries, self.fresh, self.ready, self.owners
        deadline = now + ack_timeout
        out: list[Entry] = []
        while len(out) < max_messages:
            if ready and (not fresh or ready[0] < fresh[0]):
                entry = entries.get(heapq.heappop(ready))
                if entry is None or entry.deadline is not None:
                    continue  # finished, or already delivered: a leftover queue item
                if entry.visible_at > now:
                    heapq.heappush(self.delayed, (entry.visible_at, entry.offset))
                    continue
            elif fresh:
                offset = fresh.popleft()
                entry = entries.get(offset)
                if entry is None:
                    continue
                key = entry.key
                if key is not None:
                    owner = owners.get(key)
                    if owner is None:
                        owners[key] = offset
                    elif owner != offset:  # an earlier message of this key is not finished
                        entry.record = None  # read again when its turn comes: keeps memory bounded
                        self.held.setdefault(key, deque()).append(offset)
                        continue
            else:
                break
            entry.attempts += 1
            entry.deadline = deadline
            out.append(entry)
        if out:
            push = heapq.heappush
            deadlines = self.deadlines
            for entry in out:
                push(deadlines, (deadline, entry.offset, entry.attempts))
            if len(deadlines) > 2 * len(entries) + 64:  # mostly acked deliveries: keep it the size of the window
                self.deadlines = [(e.deadline, o, e.attempts) for o, e in entries.items() if e.deadline is not None]
                heapq.heapify(self.deadlines)
        return out

    def _expire(self, now: float) -> None:
        """Make deliverable again what passed its ack deadline or its nack delay."""
        entries, ready = self.entries, self.ready
        deadlines, delayed = self.deadlines, self.delayed
        while deadlines and deadlines[0][0] <= now:
            when, offset, attempts = heapq.heappop(deadlines)
            entry = entries.get(offset)
            if entry is not None and entry.deadline == when and entry.attempts == attempts:
                entry.deadline = None  # the consumer did not ack in time: redeliver
                heapq.heappush(ready, offset)
        while delayed and delayed[0][0] <= now:
            when, offset = heapq.heappop(delayed)
            entry = entries.get(offset)
            if entry is not None and entry.deadline is None and entry.visible_at == when:
                heapq.heappush(ready, offset)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time an entry becomes deliverable (retry due or ack deadline); ``now``
        if one already is (the clock moved on since the last ``take``).

        Entries waiting only behind their key are not counted: an ack wakes those."""
        self._expire(now)
        if self.ready:
            return now
        entries = self.entries
        deadlines, delayed = self.deadlines, self.delayed
        while deadlines:
            when, offset, attempts = deadlines[0]
            entry = entries.get(offset)
            if entry is not None and entry.deadline == when and entry.attempts == attempts:
                break
            heapq.heappop(deadlines)  # acked, nacked or seeked away
        while delayed:
            when, offset = delayed[0]
            entry = entries.get(offset)
            if entry is not None and entry.deadline is None and entry.visible_at == when:
                break
            heapq.heappop(delayed)
        if deadlines and delayed:
            return min(deadlines[0][0], delayed[0][0])
        if deadlines:
            return deadlines[0][0]
        return delayed[0][0] if delayed else None

    def check(self, offset: int, attempt: int) -> Entry:
        """The in-flight entry of this delivery; StaleReceipt when it is not in flight."""
        return self._current(offset, attempt)

    def ack(self, offset: int, attempt: int) -> Entry:
        entry = self._current(offset, attempt)
        self.finish(offset)
        return entry

    def finish(self, offset: int) -> bool:
        """Done with ``offset`` whatever its state (its ack is already journaled).

        True when this lets something else be delivered: a message its key held back."""
        freed = self._drop(offset)
        self.mark_done(offset)
        return freed

    def nack(self, offset: int, attempt: int, visible_at: float) -> Entry:
        entry = self._current(offset, attempt)
        entry.deadline = None
        entry.visible_at = visible_at
        heapq.heappush(self.delayed, (visible_at, offset))  # keeps its key until redelivered and finished
        if len(self.delayed) > 2 * len(self.entries) + 64:
            self.delayed = [(e.visible_at, o) for o, e in self.entries.items() if e.deadline is None and e.visible_at > 0]
            heapq.heapify(self.delayed)
        return entry

    def mark_done(self, offset: int) -> None:
        """Record ``offset`` as finished (also used when replaying the journal)."""
        if self.attempts:
            self.attempts.pop(offset, None)
        if offset < self.committed:
            return
        if offset in self.entries:
            self._drop(offset)
        if offset == self.committed:
            committed, done = offset + 1, self.done
            while committed in done:
                done.discard(committed)
                committed += 1
            self.committed = committed
            if self.read_pos < committed:
                self.read_pos = committed
        else:
            self.done.add(offset)

    def seek(self, offset: int) -> None:
        self.epoch += 1
        self.committed = self.read_pos = offset
        self.entries.clear()
        self.done.clear()
        self.attempts.clear()
        self._reset_queues()

    # views -------------------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(1 for e in self.entries.values() if e.deadline is not None)

    def lag(self, next_offset: int) -> int:
        return max(next_offset - self.committed - len(self.done), 0)

    def _current(self, offset: int, attempt: int) -> Entry:
        entry = self.entries.get(offset)
        if entry is None or entry.attempts != attempt or entry.deadline is None:
            raise StaleReceipt(f"delivery {offset}/{attempt} is no longer in flight")
        return entry

    def _drop(self, offset: int) -> bool:
        """Forget the entry at ``offset``; its key passes to the next held message, if any.

        True when a held message became deliverable."""
        entry = self.entries.pop(offset, None)
        if entry is None or entry.key is None or self.owners.get(entry.key) != offset:
            return False
        key = entry.key
        waiting = self.held.get(key)
        while waiting:
            successor = waiting.popleft()
            if successor in self.entries:
                self.owners[key] = successor
                heapq.heappush(self.ready, successor)
                if not waiting:
                    del self.held[key]
                return True
        self.held.pop(key, None)
        del self.owners[key]
        return False
