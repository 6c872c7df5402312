"""The embedded broker: topics as partition logs on local disk, consumer groups with journaled acks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, Literal

import orjson

from mezzo.messaging.backend import (
    Delivery,
    Feature,
    GroupStats,
    Position,
    Record,
    StaleReceiptError,
    TooManyGroupsError,
    TopicStats,
)
from mezzo.messaging.backends.embedded.cursor import Entry, PartitionCursor
from mezzo.messaging.backends.embedded.log import LogClosedError, PartitionLog
from mezzo.messaging.backends.embedded.log import Record as LogRecord
from mezzo.messaging.model import TopicSpec

FsyncPolicy = Literal["always", "batch", "os"]
_KEY = struct.Struct("<H")
MAX_GROUPS = 1000  # consumer groups per topic
MAX_PENDING = 20_000  # loaded-but-unfinished messages per group and partition
LOAD_AT_LEAST = 100  # records read from the log at a time when a fetch needs more
LATER = 0.02  # seconds attempt counts may wait for an ack to share its journal write
CHECKPOINT_EVERY = 50_000  # journal records between checkpoints


def frame(record: Record) -> bytes:
    """Log payload: key length (+1; 0 for none), key, record id length, id, then the service's payload."""
    rid = record.id.encode()
    if record.key is None:
        return b"".join((b"\x00\x00", _KEY.pack(len(rid)), rid, record.payload))
    key = record.key.encode()
    return b"".join((_KEY.pack(len(key) + 1), key, _KEY.pack(len(rid)), rid, record.payload))


def unframe(data: bytes) -> tuple[str | None, str, bytes]:
    (klen,) = _KEY.unpack_from(data, 0)
    key = None if klen == 0 else data[2 : 2 + klen - 1].decode()
    pos = 2 + max(klen - 1, 0)
    (rlen,) = _KEY.unpack_from(data, pos)
    rid = data[pos + 2 : pos + 2 + rlen].decode()
    return key, rid, data[pos + 2 + rlen :]


def frame_key(data: bytes) -> str | None:
    """The key of a framed record, without decoding the rest."""
    klen = data[0] | data[1] << 8
    return None if klen == 0 else data[2 : 1 + klen].decode()


def frame_payload(data: bytes) -> bytes:
    """The service's payload of a framed record."""
    pos = 2 + max((data[0] | data[1] << 8) - 1, 0)
    return data[pos + 2 + (data[pos] | data[pos + 1] << 8) :]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class GroupState:
    """A group's cursors for every partition of a topic, and the journal that makes acks durable.

    Journal entries (JSON arrays): ``["a", partition, [offsets]]`` acked, ``["d", partition,
    [offsets], [attempts]]`` delivered (attempt counts), ``["S", partition, offset, epoch]``
    seek; the one-offset forms ``["A", p, o]`` and ``["D", p, o, attempt]`` of older
    versions are still read.
    """

    def __init__(self, directory: Path, partitions: int, fsync: FsyncPolicy) -> None:
        self.directory = directory
        self.cursors = [PartitionCursor() for _ in range(partitions)]
        # receipt -> (partition, entry) of every delivery in flight: an ack is a dict look-up
        self.flying: dict[str, tuple[int, Entry]] = {}
        self.journal = PartitionLog(directory / "journal", fsync=fsync)
        self._since_checkpoint = 0
        self._checkpointing = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._later: list[list[Any]] = []  # journal entries waiting to go with the next record()
        self._flush: asyncio.Task[None] | None = None
        self.rr = 0  # partition to look at first, for fairness

    async def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await self.journal.open()
        start = self.journal.first_offset
        checkpoint = self.directory / "checkpoint.json"
        if checkpoint.exists():
            state = orjson.loads(checkpoint.read_bytes())
            for p, saved in state["partitions"].items():
                cursor = self._cursor(int(p))
                cursor.seek(saved["committed"])
                cursor.epoch = saved.get("epoch", 0)
                cursor.done = set(saved["done"])
                cursor.attempts = {int(o): a for o, a in saved["attempts"].items()}
            start = max(start, state["journal_next"])
        offset = start
        while True:
            batch = self.journal.read(offset, 10_000)
            if not batch:
                break
            for rec in batch:
                self._replay(orjson.loads(rec.payload))
            offset = batch[-1].offset + 1

    def _cursor(self, partition: int) -> PartitionCursor:
        while partition >= len(self.cursors):
            self.cursors.append(PartitionCursor())
        return self.cursors[partition]

    def _replay(self, entry: list[Any]) -> None:
        op, cursor = entry[0], self._cursor(int(entry[1]))
        if op == "a":
            for offset in entry[2]:
                cursor.mark_done(offset)
        elif op == "d":
            for offset, attempt in zip(entry[2], entry[3], strict=True):
                if offset >= cursor.committed and offset not in cursor.done:  # may follow its own ack
                    cursor.attempts[offset] = attempt
        elif op == "A":
            cursor.mark_done(int(entry[2]))
        elif op == "D":
            offset = int(entry[2])
            if offset >= cursor.committed and offset not in cursor.done:
                cursor.attempts[offset] = int(entry[3])
        elif op == "S":
            cursor.seek(int(entry[2]))
            cursor.epoch = int(entry[3]) if len(entry) > 3 else cursor.epoch

    def live(self, receipt: str) -> tuple[int, Entry] | None:
        """(partition, entry) when ``receipt`` names a delivery still in flight, else None."""
        found = self.flying.get(receipt)
        if found is None:
            return None
        partition, entry = found
        if entry.deadline is None or entry.receipt != receipt or self.cursors[partition].entries.get(entry.offset) is not entry:
            return None
        return found

    def forget(self, entries: Iterable[Entry]) -> None:
        """Drop the receipts of these entries (finished, seeked or skipped by retention)."""
        flying = self.flying
        for entry in entries:
            if entry.receipt is not None:
                flying.pop(entry.receipt, None)
                entry.receipt = None

    async def record(self, entries: list[list[Any]]) -> None:
        """Journal decisions, after any that ``record_later`` holds; returns when they are durable."""
        if self._later:
            entries, self._later = self._later + entries, []
        if not entries:
            return
        now = int(time.time() * 1000)
        await self.journal.append([(now, orjson.dumps(e)) for e in entries])
        self._since_checkpoint += sum(len(e[2]) if isinstance(e[2], list) else 1 for e in entries)
        if self._since_checkpoint >= CHECKPOINT_EVERY and not self._checkpointing.locked():
            # in the background: the ack that crossed the line need not wait for the snapshot
            self._since_checkpoint = 0
            self._in_background(self.checkpoint())

    def record_later(self, entries: list[list[Any]]) -> None:
        """Journal these without waiting for them: they go with the next ``record`` (usually the
        acks of the same deliveries, so one fsync serves both) or on their own after ``LATER``."""
        self._later += entries
        if self._flush is None or self._flush.done():
            self._flush = self._in_background(self._record_soon())

    async def _record_soon(self) -> None:
        await asyncio.sleep(LATER)
        if self._later:
            with contextlib.suppress(LogClosedError):  # the group was deleted: nothing to keep
                await self.record([])

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def checkpoint(self) -> None:
        async with self._checkpointing:  # one at a time: they share checkpoint.tmp
            self._since_checkpoint = 0
            await self._write_checkpoint()

    async def _write_checkpoint(self) -> None:
        state = {
            "journal_next": self.journal.next_offset,
            "partitions": {
                str(p): {
                    "committed": c.committed,
                    "epoch": c.epoch,
                    "done": sorted(c.done),
                    "attempts": {str(e.offset): e.attempts for e in c.entries.values() if e.attempts}
                    | {str(o): a for o, a in c.attempts.items()},
                }
                for p, c in enumerate(self.cursors)
            },
        }
        await asyncio.to_thread(_atomic_write, self.directory / "checkpoint.json", orjson.dumps(state))
        await self.journal.truncate_before(state["journal_next"])

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.checkpoint()
        await self.journal.close()


class TopicState:
    def __init__(self, name: str, directory: Path, spec: TopicSpec, fsync: FsyncPolicy) -> None:
        self.name = name
        self.directory = directory
        self.spec = spec
        self.fsync = fsync
        self.logs: list[PartitionLog] = []
        self.groups: dict[str, GroupState] = {}
        self.changed = asyncio.Event()  # set on publish, nack and seek: wakes waiting fetches
        # dedup window: id -> (stored at, partition, offset); plain tuples, which the GC does not track
        self.seen: OrderedDict[str, tuple[float, int, int]] = OrderedDict()

    async def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.directory / "topic.json", orjson.dumps(self.spec.model_dump(mode="json", by_alias=True)))
        await self.grow(self.spec.partitions)
        groups = self.directory / "groups"
        if groups.is_dir():
            for path in sorted(groups.iterdir()):
                await self.group(path.name)
        await self._rebuild_dedup()

    async def grow(self, partitions: int) -> None:
        while len(self.logs) < partitions:
            log = PartitionLog(self.directory / f"p{len(self.logs)}", fsync=self.fsync,
                               segment_bytes=self.spec.segment_bytes)
            await log.open()
            self.logs.append(log)

    async def group(self, name: str, max_groups: int = MAX_GROUPS) -> GroupState:
        state = self.groups.get(name)
        if state is None:
            if len(self.groups) >= max_groups:  # each group holds files open: bound what callers can create
                raise TooManyGroupsError(
                    f"topic {self.name!r} already has {max_groups} consumer groups; delete unused ones")
            state = GroupState(self.directory / "groups" / name, len(self.logs), self.fsync)
            await state.open()
            self.groups[name] = state
        return state

    async def _rebuild_dedup(self) -> None:
        window_ms = int(self.spec.dedup_window * 1000)
        if window_ms <= 0:
            return
        since = int(time.time() * 1000) - window_ms
        found: list[tuple[int, str, int, int]] = []
        for p, log in enumerate(self.logs):
            offset = log.offset_for_timestamp(since)
            while batch := log.read(offset, 5000):
                for rec in batch:
                    _, rid, _ = unframe(rec.payload)
                    found.append((rec.timestamp_ms, rid, p, rec.offset))
                offset = batch[-1].offset + 1
        for ts, rid, partition, offset in sorted(found, key=lambda f: f[0]):
            self.seen[rid] = (ts / 1000, partition, offset)

    def evict(self, now: float) -> None:
        """Forget ids older than the dedup window (the oldest come first)."""
        horizon = now - self.spec.dedup_window
        seen = self.seen
        while seen:
            first = next(iter(seen.values()))
            if first[0] >= horizon:
                break
            seen.popitem(last=False)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def close(self) -> None:
        for group in self.groups.values():
            await group.close()
        for log in self.logs:
            await log.close()


class EmbeddedBroker:
    """Broker on local disk in ``directory``; one process owns it."""

    engine = "embedded"
    features = frozenset({Feature.PARTITIONS, Feature.KEY_ORDERING, Feature.SEEK, Feature.RETENTION})
    record_limit: int | None = None

    def __init__(self, directory: Path, *, fsync: FsyncPolicy = "batch", clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.directory = directory
        self.fsync = fsync
        self.clock = clock
        self.max_groups = MAX_GROUPS
        self._topics: dict[str, TopicState] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        root = self.directory / "topics"
        root.mkdir(parents=True, exist_ok=True)
        for meta in sorted(root.glob("*/*/topic.json")):  # topics/NAMESPACE/NAME/topic.json
            spec = TopicSpec.model_validate(orjson.loads(meta.read_bytes()))
            await self.ensure_topic(f"{meta.parent.parent.name}/{meta.parent.name}", spec)

    async def close(self) -> None:
        for topic in self._topics.values():
            await topic.close()
        self._topics.clear()

    async def ready(self) -> bool:
        return self.directory.is_dir()

    # topics ----------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, spec: TopicSpec) -> None:
        async with self._lock:
            state = self._topics.get(topic)
            if state is None:
                state = TopicState(topic, self.directory / "topics" / topic, spec, self.fsync)
                await state.open()
                self._topics[topic] = state
                return
            if spec.partitions < len(state.logs):
                spec = spec.model_copy(update={"partitions": len(state.logs)})  # partitions only grow
            state.spec = spec
            _atomic_write(state.directory / "topic.json", orjson.dumps(spec.model_dump(mode="json", by_alias=True)))
            await state.grow(spec.partitions)

    async def delete_topic(self, topic: str) -> None:
        async with self._lock:
            state = self._topics.pop(topic, None)
            if state is not None:
                await state.close()
                await asyncio.to_thread(shutil.rmtree, state.directory, True)

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def has_topic(self, topic: str) -> bool:
        return topic in self._topics

    def _topic(self, topic: str) -> TopicState:
        try:
            return self._topics[topic]
        except KeyError:
            raise LookupError(f"topic {topic!r} does not exist") from None

    # publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, records: list[Record], partitions: list[int]) -> list[Position]:
        state = self._topic(topic)
        now = time.time()
        window = state.spec.dedup_window
        seen_ids = state.seen
        positions: list[Position | None] = [None] * len(records)
        by_partition: dict[int, list[int]] = {}
        batch_ids: dict[str, int] = {}
        logs = len(state.logs)
        for i, (record, partition) in enumerate(zip(records, partitions, strict=True)):
            rid = record.id
            seen = seen_ids.get(rid) if window > 0 else None
            if seen is not None and now - seen[0] >= window:
                seen = None  # outside the window (a quiet topic evicts nothing until it publishes)
            if seen is not None:
                positions[i] = Position(seen[1], seen[2], duplicate=True)
            elif rid in batch_ids:
                continue  # resolved after the append
            else:
                batch_ids[rid] = i
                indexes = by_partition.get(partition % logs)
                if indexes is None:
                    indexes = by_partition[partition % logs] = []
                indexes.append(i)
        for partition, indexes in by_partition.items():
            offsets = await state.logs[partition].append(
                [(records[i].timestamp_ms, frame(records[i])) for i in indexes]
            )
            if window > 0:
                for i, offset in zip(indexes, offsets, strict=True):
                    positions[i] = Position(partition, offset)
                    rid = records[i].id
                    if rid in seen_ids:  # stored again after its window passed: to the young end
                        seen_ids.move_to_end(rid)
                    seen_ids[rid] = (now, partition, offset)
            else:
                for i, offset in zip(indexes, offsets, strict=True):
                    positions[i] = Position(partition, offset)
        if window > 0 and by_partition:
            state.evict(now)
        if len(batch_ids) < len(records):
            for i, record in enumerate(records):
                if positions[i] is None:
                    first = positions[batch_ids[record.id]]
                    assert first is not None
                    positions[i] = Position(first.partition, first.offset, duplicate=True)
        if by_partition:
            state.wake()
        return positions  # type: ignore[return-value]

    # consuming -------------------------------------------------------------------------

    async def fetch(
        self, topic: str, group: str, max_messages: int, wait: float, ack_timeout: float
    ) -> list[Delivery]:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        deadline = self.clock() + wait
        while True:
            if self._topics.get(topic) is not state or state.groups.get(group) is not gstate:
                raise LookupError(f"topic {topic!r} or its group {group!r} was deleted")
            changed = state.changed
            out = self._take(state, gstate, max_messages, ack_timeout)
            if out:
                # Attempt counts are journaled without holding the delivery back for an fsync:
                # at worst a crash forgets the last few, and a message is retried once more.
                gstate.record_later(_delivered(out))
                return out
            now = self.clock()
            if now >= deadline:
                return []
            wakeups = [w for c in gstate.cursors if (w := c.next_wakeup(now)) is not None]
            until = min([deadline, *wakeups])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(until - now, 0.001)):
                    await changed.wait()

    def _take(self, state: TopicState, gstate: GroupState, max_messages: int, ack_timeout: float) -> list[Delivery]:
        out: list[Delivery] = []
        count = len(state.logs)
        now = self.clock()
        for step in range(count):
            partition = (gstate.rr + step) % count
            cursor = gstate._cursor(partition)
            log = state.logs[partition]
            if cursor.committed < log.first_offset:
                first = log.first_offset
                gstate.forget([e for e in cursor.entries.values() if e.offset < first])
                cursor.skip_to(first)
            want = max_messages - len(out)
            taken = cursor.take(now, want, ack_timeout)
            # read from the log only what this fetch needs (and what waits behind busy keys)
            while len(taken) < want and len(cursor.entries) < MAX_PENDING and cursor.read_pos < log.next_offset:
                batch = log.read(cursor.read_pos, min(MAX_PENDING - len(cursor.entries),
                                                      max(want - len(taken), LOAD_AT_LEAST)))
                if not batch:
                    break
                cursor.load([(rec.offset, frame_key(rec.payload), rec) for rec in batch])
                taken += cursor.take(now, want - len(taken), ack_timeout)
            if taken:
                self._deliver(state, gstate, partition, cursor, taken, out)
            if len(out) >= max_messages:
                break
        gstate.rr = (gstate.rr + 1) % count
        return out

    def _deliver(self, state: TopicState, gstate: GroupState, partition: int, cursor: PartitionCursor,
                 taken: list[Entry], out: list[Delivery]) -> None:
        """Deliveries for ``taken`` with fresh receipts; records not kept from loading are read again."""
        missing = [e.offset for e in taken if e.record is None]
        records: dict[int, LogRecord] = {}
        if missing:
            # one read for the span of offsets (usually contiguous) instead of one per message
            first, last = min(missing), max(missing)
            if last - first < 4 * len(missing):
                records = {rec.offset: rec for rec in state.logs[partition].read(first, last - first + 1, 64 * 1024 * 1024)
                           if rec.offset <= last}
        flying, name, tail = gstate.flying, state.name, f":{cursor.epoch}"
        for entry in taken:
            rec = entry.record
            if entry.receipt is not None:  # the last delivery's receipt ends here
                flying.pop(entry.receipt, None)
                entry.receipt = None
            if rec is None:
                rec = records.get(entry.offset) or self._record(state, partition, entry.offset)
                if rec is None:  # removed by retention meanwhile
                    continue
            else:
                entry.record = None  # handed out: a redelivery reads it again
            receipt = entry.receipt = f"{partition}:{entry.offset}:{entry.attempts}{tail}"
            flying[receipt] = (partition, entry)
            out.append(Delivery(name, partition, entry.offset, rec.timestamp_ms, frame_payload(rec.payload),
                                entry.attempts, receipt))

    @staticmethod
    def _record(state: TopicState, partition: int, offset: int):  # type: ignore[no-untyped-def]
        batch = state.logs[partition].read(offset, 1)
        return batch[0] if batch and batch[0].offset == offset else None

    async def in_flight(self, topic: str, group: str, receipts: list[str]) -> dict[str, Delivery]:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        out: dict[str, Delivery] = {}
        for receipt in receipts:
            found = gstate.live(receipt)
            if found is None:
                continue
            partition, entry = found
            rec = self._record(state, partition, entry.offset)
            if rec is not None:
                out[receipt] = Delivery(state.name, partition, entry.offset, rec.timestamp_ms,
                                        frame_payload(rec.payload), entry.attempts, receipt)
        return out

    async def ack(self, topic: str, group: str, receipts: list[str]) -> None:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        live = gstate.live
        by_partition: dict[int, list[int]] = {}
        stale: list[str] = []
        for receipt in receipts:
            found = live(receipt)
            if found is None:
                stale.append(receipt)
            else:
                offsets = by_partition.get(found[0])
                if offsets is None:
                    offsets = by_partition[found[0]] = []
                offsets.append(found[1].offset)
        # journal first: the cursor changes only once the ack is durable
        await gstate.record([["a", p, offsets] for p, offsets in by_partition.items()])
        unblocked = False
        flying = gstate.flying
        for partition, offsets in by_partition.items():
            cursor = gstate._cursor(partition)
            entries = cursor.entries
            for offset in offsets:
                entry = entries.get(offset)  # may have been redelivered while the ack was journaled
                if entry is not None and entry.receipt is not None:
                    flying.pop(entry.receipt, None)
                unblocked |= cursor.finish(offset)
            unblocked |= len(entries) >= MAX_PENDING - len(offsets)  # a full window may take more now
        if unblocked:
            state.wake()  # a key that was in flight, or a full window, may release more messages
        if stale:
            raise StaleReceiptError(f"not in flight (acked, timed out or redelivered): {', '.join(stale[:10])}")

    async def nack(self, topic: str, group: str, receipts: list[str], delay: float) -> None:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        stale: list[str] = []
        visible_at = self.clock() + delay
        for receipt in receipts:
            found = gstate.live(receipt)
            if found is None:
                stale.append(receipt)
                continue
            partition, entry = found
            gstate._cursor(partition).nack(entry.offset, entry.attempts, visible_at)
            gstate.forget([entry])
        state.wake()
        if stale:
            raise StaleReceiptError(f"not in flight (acked, timed out or redelivered): {', '.join(stale[:10])}")

    async def seek(self, topic: str, group: str, positions: dict[int, int]) -> dict[int, int]:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        journal: list[list[Any]] = []
        applied: dict[int, int] = {}
        for partition, offset in positions.items():
            log = state.logs[partition]
            target = min(max(offset, log.first_offset), log.next_offset)
            cursor = gstate._cursor(partition)
            gstate.forget(cursor.entries.values())
            cursor.seek(target)
            journal.append(["S", partition, target, cursor.epoch])
            applied[partition] = target
        await gstate.record(journal)
        state.wake()
        return applied

    # inspection ------------------------------------------------------------------------

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        return {p: log.offset_for_timestamp(timestamp_ms) for p, log in enumerate(self._topic(topic).logs)}

    async def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        return {p: (log.first_offset, log.next_offset) for p, log in enumerate(self._topic(topic).logs)}

    async def read(self, topic: str, partition: int, offset: int, max_messages: int) -> list[Delivery]:
        state = self._topic(topic)
        if not 0 <= partition < len(state.logs):
            raise LookupError(f"topic {topic!r} has no partition {partition}")
        return [
            Delivery(topic, partition, rec.offset, rec.timestamp_ms, frame_payload(rec.payload), 0, "")
            for rec in state.logs[partition].read(offset, max_messages)
        ]

    async def delete_group(self, topic: str, group: str) -> bool:
        state = self._topic(topic)
        gstate = state.groups.pop(group, None)
        if gstate is None:
            return False
        await gstate.journal.close()
        await asyncio.to_thread(shutil.rmtree, gstate.directory, True)
        state.wake()  # fetches waiting on the deleted group give up
        return True

    async def groups(self, topic: str) -> list[str]:
        return sorted(self._topic(topic).groups)

    async def group_stats(self, topic: str, group: str) -> GroupStats:
        state = self._topic(topic)
        gstate = state.groups.get(group)
        if gstate is None:
            raise LookupError(f"group {group!r} has not consumed {topic!r}")
        parts: dict[int, dict[str, int]] = {}
        for p, log in enumerate(state.logs):
            cursor = gstate._cursor(p)
            parts[p] = {"committed": cursor.committed, "next": log.next_offset,
                        "lag": cursor.lag(log.next_offset), "inFlight": cursor.in_flight()}
        return GroupStats(group, sum(v["lag"] for v in parts.values()),
                          sum(v["inFlight"] for v in parts.values()), parts)

    async def topic_stats(self, topic: str) -> TopicStats:
        state = self._topic(topic)
        firsts = [log.first_offset for log in state.logs]
        nexts = [log.next_offset for log in state.logs]
        return TopicStats(topic, len(state.logs), sum(n - f for f, n in zip(firsts, nexts, strict=True)),
                          sum(log.size_bytes for log in state.logs), firsts, nexts)

    async def enforce_retention(self, now_ms: int) -> None:
        for state in list(self._topics.values()):
            for log in state.logs:
                await log.enforce_retention(
                    max_age_ms=int(state.spec.retention * 1000),
                    max_bytes=state.spec.retention_bytes, now_ms=now_ms,
                )


def _delivered(out: list[Delivery]) -> list[list[Any]]:
    """Journal entries for the attempt counts of these deliveries, one per partition."""
    by_partition: dict[int, tuple[list[int], list[int]]] = {}
    for d in out:
        found = by_partition.get(d.partition)
        if found is None:
            found = by_partition[d.partition] = ([], [])
        found[0].append(d.offset)
        found[1].append(d.attempt)
    return [["d", p, offsets, attempts] for p, (offsets, attempts) in by_partition.items()]
