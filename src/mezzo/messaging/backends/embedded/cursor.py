"""One consumer group's progress through one partition: what is done, in flight, or waiting.

Pure logic with an injected clock: the broker feeds it records from the log and
journals what it decides. Offsets below ``committed`` are done; above it,
``done`` holds individually acked offsets (acks may arrive out of order) and
``entries`` the loaded offsets still to deliver or in flight. A key with a
message in flight (or waiting for a retry) holds back later messages of that key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class StaleReceipt(LookupError):
    pass


@dataclass(slots=True)
class Entry:
    offset: int
    key: str | None
    attempts: int = 0
    visible_at: float = 0.0  # not delivered before this time (retry backoff, nack delay)
    deadline: float | None = None  # in flight until this time


class PartitionCursor:
    def __init__(self, committed: int = 0) -> None:
        self.epoch = 0  # bumped by every seek: receipts from before it no longer match
        self.committed = committed
        self.read_pos = committed
        self.entries: dict[int, Entry] = {}  # insertion order == offset order
        self.done: set[int] = set()
        self.attempts: dict[int, int] = {}  # restored attempt counts for offsets not yet loaded
        self.in_flight_keys: dict[str, int] = {}

    # feeding -----------------------------------------------------------------------

    def load(self, records: Iterable[tuple[int, str | None]]) -> None:
        """Add records read from the log at ``read_pos`` onwards."""
        for offset, key in records:
            if offset < self.read_pos:
                continue
            self.read_pos = offset + 1
            if offset < self.committed or offset in self.done:
                self.attempts.pop(offset, None)
                continue
            self.entries[offset] = Entry(offset, key, self.attempts.pop(offset, 0))

    def skip_to(self, first_offset: int) -> int:
        """Retention removed offsets below ``first_offset``; returns how many were never acked."""
        if first_offset <= self.committed:
            return 0
        lost = 0
        for offset in range(self.committed, min(first_offset, self.read_pos)):
            if offset in self.entries:
                self._forget(self.entries.pop(offset))
                lost += 1
            elif offset not in self.done:
                lost += 1
        lost += max(first_offset - max(self.read_pos, self.committed), 0)
        self.done = {o for o in self.done if o >= first_offset}
        self.committed = first_offset
        self.read_pos = max(self.read_pos, first_offset)
        return lost

    # delivering --------------------------------------------------------------------

    def take(self, now: float, max_messages: int, ack_timeout: float) -> list[Entry]:
        """Deliver up to ``max_messages`` due entries in offset order, one per key at a time."""
        out: list[Entry] = []
        blocked: set[str] = set()
        for entry in self.entries.values():
            if entry.deadline is not None:
                if entry.deadline > now:
                    if entry.key is not None:
                        blocked.add(entry.key)
                    continue
                self._release(entry)  # the consumer did not ack in time: redeliver
            if entry.key is not None and entry.key in blocked:
                continue
            if entry.visible_at > now:
                if entry.key is not None:
                    blocked.add(entry.key)  # later messages of this key wait for it
                continue
            entry.attempts += 1
            entry.deadline = now + ack_timeout
            if entry.key is not None:
                self.in_flight_keys[entry.key] = entry.offset
                blocked.add(entry.key)
            out.append(entry)
            if len(out) >= max_messages:
                break
        return out

    def next_wakeup(self, now: float) -> float | None:
        """The earliest future time an entry becomes deliverable (retry due or ack deadline).

        Entries waiting only behind their key are not counted: an ack wakes those."""
        times = [e.deadline if e.deadline is not None else e.visible_at for e in self.entries.values()]
        future = [t for t in times if t > now]
        return min(future) if future else None

    def check(self, offset: int, attempt: int) -> Entry:
        """The in-flight entry of this delivery; StaleReceipt when it is not in flight."""
        return self._current(offset, attempt)

    def ack(self, offset: int, attempt: int) -> Entry:
        entry = self._current(offset, attempt)
        self.finish(offset)
        return entry

    def finish(self, offset: int) -> bool:
        """Done with ``offset`` whatever its state (its ack is already journaled).

        True when this may let something else be delivered: a key it held back."""
        entry = self.entries.pop(offset, None)
        if entry is not None:
            self._release(entry)
        self.mark_done(offset)
        return entry is not None and entry.key is not None

    def nack(self, offset: int, attempt: int, visible_at: float) -> Entry:
        entry = self._current(offset, attempt)
        self._release(entry)
        entry.visible_at = visible_at
        return entry

    def mark_done(self, offset: int) -> None:
        """Record ``offset`` as finished (also used when replaying the journal)."""
        self.attempts.pop(offset, None)
        if offset < self.committed:
            return
        self.entries.pop(offset, None)
        self.done.add(offset)
        while self.committed in self.done:
            self.done.discard(self.committed)
            self.committed += 1
        self.read_pos = max(self.read_pos, self.committed)

    def seek(self, offset: int) -> None:
        self.epoch += 1
        self.committed = self.read_pos = offset
        self.entries.clear()
        self.done.clear()
        self.attempts.clear()
        self.in_flight_keys.clear()

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

    def _release(self, entry: Entry) -> None:
        entry.deadline = None
        if entry.key is not None and self.in_flight_keys.get(entry.key) == entry.offset:
            del self.in_flight_keys[entry.key]

    def _forget(self, entry: Entry) -> None:
        self._release(entry)
