"""The embedded broker: topics as partition logs on local disk, consumer groups with journaled acks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal

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
from mezzo.messaging.backends.embedded.cursor import PartitionCursor, StaleReceipt
from mezzo.messaging.backends.embedded.log import PartitionLog
from mezzo.messaging.model import TopicSpec

FsyncPolicy = Literal["always", "batch", "os"]
_KEY = struct.Struct("<H")
MAX_GROUPS = 1000  # consumer groups per topic
MAX_PENDING = 20_000  # loaded-but-unfinished messages per group and partition
CHECKPOINT_EVERY = 50_000  # journal records between checkpoints


def frame(record: Record) -> bytes:
    """Log payload: key length, key, record id length, id, then the service's payload."""
    key = (record.key or "").encode()
    rid = record.id.encode()
    return _KEY.pack(len(key) + (0 if record.key is None else 1)) + key + _KEY.pack(len(rid)) + rid + record.payload


def unframe(data: bytes) -> tuple[str | None, str, bytes]:
    (klen,) = _KEY.unpack_from(data, 0)
    key = None if klen == 0 else data[2 : 2 + klen - 1].decode()
    pos = 2 + max(klen - 1, 0)
    (rlen,) = _KEY.unpack_from(data, pos)
    rid = data[pos + 2 : pos + 2 + rlen].decode()
    return key, rid, data[pos + 2 + rlen :]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class GroupState:
    """A group's cursors for every partition of a topic, and the journal that makes acks durable."""

    def __init__(self, directory: Path, partitions: int, fsync: FsyncPolicy) -> None:
        self.directory = directory
        self.cursors = [PartitionCursor() for _ in range(partitions)]
        self.journal = PartitionLog(directory / "journal", fsync=fsync)
        self._since_checkpoint = 0
        self._checkpointing = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
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

    def _replay(self, entry: list[int | str]) -> None:
        op, partition, offset = entry[0], int(entry[1]), int(entry[2])
        cursor = self._cursor(partition)
        if op == "A":
            cursor.mark_done(offset)
        elif op == "D":
            if offset >= cursor.committed and offset not in cursor.done:  # may follow its own ack
                cursor.attempts[offset] = int(entry[3])
        elif op == "S":
            cursor.seek(offset)
            cursor.epoch = int(entry[3]) if len(entry) > 3 else cursor.epoch

    async def record(self, entries: list[list[int | str]]) -> None:
        """Journal decisions; returns when they are durable."""
        if not entries:
            return
        now = int(time.time() * 1000)
        await self.journal.append([(now, orjson.dumps(e)) for e in entries])
        self._since_checkpoint += len(entries)
        if self._since_checkpoint >= CHECKPOINT_EVERY and not self._checkpointing.locked():
            # in the background: the ack that crossed the line need not wait for the snapshot
            self._since_checkpoint = 0
            task = asyncio.create_task(self.checkpoint())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def record_later(self, entries: list[list[int | str]]) -> None:
        task = asyncio.create_task(self.record(entries))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        self.seen: OrderedDict[str, tuple[float, Position]] = OrderedDict()  # dedup window

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
        found: list[tuple[int, str, Position]] = []
        for p, log in enumerate(self.logs):
            offset = log.offset_for_timestamp(since)
            while batch := log.read(offset, 5000):
                for rec in batch:
                    _, rid, _ = unframe(rec.payload)
                    found.append((rec.timestamp_ms, rid, Position(p, rec.offset)))
                offset = batch[-1].offset + 1
        for ts, rid, pos in sorted(found, key=lambda f: f[0]):
            self.seen[rid] = (ts / 1000, pos)

    def remember(self, rid: str, position: Position, now: float) -> None:
        self.seen[rid] = (now, position)
        horizon = now - self.spec.dedup_window
        while self.seen:
            first = next(iter(self.seen.values()))
            if first[0] >= horizon:
                break
            self.seen.popitem(last=False)

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
        positions: list[Position | None] = [None] * len(records)
        by_partition: dict[int, list[int]] = {}
        batch_ids: dict[str, int] = {}
        for i, (record, partition) in enumerate(zip(records, partitions, strict=True)):
            seen = state.seen.get(record.id) if state.spec.dedup_window > 0 else None
            if seen is not None and now - seen[0] >= state.spec.dedup_window:
                seen = None  # outside the window (a quiet topic evicts nothing until it publishes)
            if seen is not None:
                positions[i] = Position(seen[1].partition, seen[1].offset, duplicate=True)
            elif record.id in batch_ids:
                continue  # resolved after the append
            else:
                batch_ids[record.id] = i
                by_partition.setdefault(partition % len(state.logs), []).append(i)
        for partition, indexes in by_partition.items():
            offsets = await state.logs[partition].append(
                [(records[i].timestamp_ms, frame(records[i])) for i in indexes]
            )
            for i, offset in zip(indexes, offsets, strict=True):
                positions[i] = Position(partition, offset)
                if state.spec.dedup_window > 0:
                    state.remember(records[i].id, positions[i], now)  # type: ignore[arg-type]
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
                gstate.record_later([["D", d.partition, d.offset, d.attempt] for d in out])
                return out
            now = self.clock()
            if now >= deadline:
                return []
            wakeups = [w for c in gstate.cursors if (w := c.next_wakeup(now)) is not None]
            until = min([deadline, *wakeups])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(until - now, 0.001))

    def _take(self, state: TopicState, gstate: GroupState, max_messages: int, ack_timeout: float) -> list[Delivery]:
        out: list[Delivery] = []
        count = len(state.logs)
        now = self.clock()
        for step in range(count):
            partition = (gstate.rr + step) % count
            cursor = gstate._cursor(partition)
            log = state.logs[partition]
            if cursor.committed < log.first_offset:
                cursor.skip_to(log.first_offset)
            if len(cursor.entries) < MAX_PENDING and cursor.read_pos < log.next_offset:
                batch = log.read(cursor.read_pos, MAX_PENDING - len(cursor.entries))
                cursor.load((rec.offset, unframe(rec.payload)[0]) for rec in batch)
            taken = cursor.take(now, max_messages - len(out), ack_timeout)
            if taken:
                # one read for the span of offsets taken (usually contiguous) instead of one per message
                first, last = taken[0].offset, max(e.offset for e in taken)
                records = {rec.offset: rec for rec in log.read(first, last - first + 1, 64 * 1024 * 1024)
                           if rec.offset <= last} if last - first < 4 * len(taken) else {}
                for entry in taken:
                    rec = records.get(entry.offset) or self._record(state, partition, entry.offset)
                    if rec is None:
                        continue
                    out.append(Delivery(state.name, partition, entry.offset, rec.timestamp_ms,
                                        unframe(rec.payload)[2], entry.attempts,
                                        f"{partition}:{entry.offset}:{entry.attempts}:{cursor.epoch}"))
            if len(out) >= max_messages:
                break
        gstate.rr = (gstate.rr + 1) % count
        return out

    @staticmethod
    def _record(state: TopicState, partition: int, offset: int):  # type: ignore[no-untyped-def]
        batch = state.logs[partition].read(offset, 1)
        return batch[0] if batch and batch[0].offset == offset else None

    def _in_flight(self, state: TopicState, gstate: GroupState, receipt: str) -> tuple[int, int] | None:
        """(partition, offset) when ``receipt`` names a delivery still in flight, else None."""
        parsed = _parse_receipt(receipt, len(state.logs))
        if parsed is None:
            return None
        partition, offset, attempt, epoch = parsed
        cursor = gstate._cursor(partition)
        if cursor.epoch != epoch:
            return None
        try:
            cursor.check(offset, attempt)
        except StaleReceipt:
            return None
        return partition, offset

    async def in_flight(self, topic: str, group: str, receipts: list[str]) -> dict[str, Delivery]:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        out: dict[str, Delivery] = {}
        for receipt in receipts:
            found = self._in_flight(state, gstate, receipt)
            if found is None:
                continue
            partition, offset = found
            rec = self._record(state, partition, offset)
            if rec is not None:
                attempt = gstate._cursor(partition).entries[offset].attempts
                out[receipt] = Delivery(state.name, partition, offset, rec.timestamp_ms,
                                        unframe(rec.payload)[2], attempt, receipt)
        return out

    async def ack(self, topic: str, group: str, receipts: list[str]) -> None:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        accepted: list[tuple[int, int]] = []
        stale: list[str] = []
        for receipt in receipts:
            found = self._in_flight(state, gstate, receipt)
            if found is None:
                stale.append(receipt)
            else:
                accepted.append(found)
        # journal first: the cursor changes only once the ack is durable
        await gstate.record([["A", p, o] for p, o in accepted])
        unblocked = False
        for partition, offset in accepted:
            cursor = gstate._cursor(partition)
            unblocked |= cursor.finish(offset) or len(cursor.entries) >= MAX_PENDING - len(accepted)
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
            parsed = _parse_receipt(receipt, len(state.logs))
            if parsed is None or self._in_flight(state, gstate, receipt) is None:
                stale.append(receipt)
                continue
            partition, offset, attempt, _ = parsed
            gstate._cursor(partition).nack(offset, attempt, visible_at)
        state.wake()
        if stale:
            raise StaleReceiptError(f"not in flight (acked, timed out or redelivered): {', '.join(stale[:10])}")

    async def seek(self, topic: str, group: str, positions: dict[int, int]) -> dict[int, int]:
        state = self._topic(topic)
        gstate = await state.group(group, self.max_groups)
        journal: list[list[int | str]] = []
        applied: dict[int, int] = {}
        for partition, offset in positions.items():
            log = state.logs[partition]
            target = min(max(offset, log.first_offset), log.next_offset)
            cursor = gstate._cursor(partition)
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
            Delivery(topic, partition, rec.offset, rec.timestamp_ms, unframe(rec.payload)[2], 0, "")
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


def _parse_receipt(receipt: str, partitions: int) -> tuple[int, int, int, int] | None:
    """``partition:offset:attempt:epoch`` with a partition the topic has; None otherwise."""
    parts = receipt.split(":")
    if len(parts) != 4 or not all(p.isdigit() and len(p) < 20 for p in parts):
        return None
    partition, offset, attempt, epoch = (int(p) for p in parts)
    return (partition, offset, attempt, epoch) if partition < partitions else None
