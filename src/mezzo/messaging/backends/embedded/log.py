"""The durable, crash-safe, append-only log of one topic partition of the embedded broker.

Layout: a directory of segment files named by their first offset (``00000000000000000000.log``),
each a run of frames (format in ``segment.py``: magic/version byte, CRC-32, length, offset,
timestamp, payload), plus ``<base>.index`` caches of closed segments' sparse indexes.

Durability, by ``fsync`` policy:

- ``always``: every ``append`` returns after an fsync covering its records (appends that
  arrive while one is running share the next one).
- ``batch`` (default): group commit. Appends are framed into a memory buffer; one committer
  writes the buffer, fsyncs and releases every append the fsync covered. While appends come
  from several callers at once (the last fsync released more than one) it starts at most one
  fsync per ``batch_window`` seconds so that they share it, but goes early once as many appends
  wait as the last fsync released; a lone sequential caller is synced at once rather than made
  to wait for company (compare PostgreSQL's ``commit_delay`` and ``commit_siblings``).
- ``os``: each ``append`` writes to the OS before returning; no fsync (survives a process
  crash, not a power loss).

Readers see only records their policy made durable (``next_offset``). Crash safety rests on two
invariants: a segment is fsynced before the next one is created (in every policy), so only the
last segment can hold a torn write, and ``open`` verifies that segment frame by frame and cuts it
at the first bad frame. Damage anywhere else raises ``CorruptLogError`` instead of losing data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import structlog

from mezzo.messaging.backends.embedded.segment import (
    HEADER_SIZE,
    CorruptLogError,
    Record,
    Segment,
    frames_size,
    segment_path,
)

__all__ = ["CorruptLogError", "LogClosedError", "PartitionLog", "Record"]

FsyncPolicy = Literal["always", "batch", "os"]
log = structlog.get_logger("mezzo.messaging")


class LogClosedError(RuntimeError):
    """The log is not open (or failed: an fsync error leaves the file state unknown)."""


class PartitionLog:
    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = "batch",
        batch_window: float = 0.002,
        segment_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if fsync not in ("always", "batch", "os"):
            raise ValueError(f"fsync must be 'always', 'batch' or 'os', not {fsync!r}")
        if batch_window < 0 or segment_bytes <= HEADER_SIZE:
            raise ValueError(
                "batch_window must be >= 0 and segment_bytes larger than a frame header"
            )
        self.directory = Path(directory)
        self.fsync: FsyncPolicy = fsync
        self.batch_window = batch_window if fsync == "batch" else 0.0
        self.segment_bytes = segment_bytes
        self._segments: list[Segment] = []
        self._bases: list[int] = []  # segment bases, for bisect
        self._written = 0  # next offset to assign (records framed, maybe not yet durable)
        self._durable = 0  # next offset readers may see
        self._synced = 0  # next offset covered by an fsync
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._committer: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        self._rolling: asyncio.Future[None] | None = None
        self._changed: asyncio.Future[None] | None = None
        self._dir_dirty = False  # a segment file was created and its directory entry not synced
        self._last_sync = float("-inf")
        self._last_group = 0  # appends released by the last sync
        self._quorum: asyncio.Future[None] | None = None  # resolved when _last_group appends wait
        self._open = False
        self._failed: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        self._segments = await asyncio.to_thread(self._load)
        self._bases = [s.base for s in self._segments]
        self._sync_lock = asyncio.Lock()  # a lock binds to the loop that first waits on it
        self._written = self._durable = self._synced = self._segments[-1].next_offset
        self._failed, self._open = None, True

    def _load(self) -> list[Segment]:
        directory = self.directory
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(directory.parent)
        bases = sorted(int(p.stem) for p in directory.glob("*.log") if _is_base(p.stem))
        for stale in directory.glob("*.index*"):  # caches of deleted segments, torn temp files
            if stale.suffix != ".index" or not _is_base(stale.stem) or int(stale.stem) not in bases:
                stale.unlink(missing_ok=True)
        segments: list[Segment] = []
        try:
            for i, base in enumerate(bases):
                if segments and segments[-1].next_offset != base:
                    raise CorruptLogError(
                        f"{segment_path(directory, base)}: starts at offset {base} but the "
                        f"previous segment ends at {segments[-1].next_offset}"
                    )
                segments.append(seg := Segment.open(directory, base))
                if i == len(bases) - 1:
                    if dropped := seg.scan(tail=True):
                        log.warning(
                            "truncated torn tail of partition log",
                            file=str(seg.path),
                            at_byte=seg.end,
                            dropped_bytes=dropped,
                        )
                elif not seg.load_index():
                    seg.scan(tail=False)
                    seg.save_index()
            if not segments:
                segments.append(Segment.open(directory, 0, create=True))
                _fsync_dir(directory)
        except BaseException:
            for seg in segments:
                seg.close()
            raise
        return segments

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False  # new appends fail from here on
        try:
            while self._rolling is not None:
                await asyncio.shield(self._rolling)
            if self._failed is None:
                await self._sync(force=self.fsync != "os")
        finally:
            if self._committer is not None:
                self._committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._committer
            self._fail_waiters(LogClosedError("partition log closed"))
            for seg in self._segments:
                seg.close()
            self._wake_readers()

    # -- appending -------------------------------------------------------------------------

    async def append(self, records: Sequence[tuple[int, bytes]]) -> list[int]:
        """Append ``(timestamp_ms, payload)`` records; returns their offsets once durable."""
        self._check_writable()
        if not records:
            return []
        await self._make_room(frames_size(records))
        seg, first = self._segments[-1], self._written
        seg.encode(records, first)
        self._written = end = first + len(records)
        if self.fsync == "os":
            try:
                seg.write(seg.take_pending())
            except OSError as exc:  # how much reached the file is unknown: stop here
                self._failed = exc
                raise
            self._publish(seg, seg.end, seg.count, end)
        else:
            done = asyncio.get_running_loop().create_future()
            self._waiters.append((end, done))
            quorum = self._quorum
            if quorum is not None and not quorum.done() and len(self._waiters) >= self._last_group:
                quorum.set_result(None)  # everyone expected is here: commit now
                self._quorum = None
            if self._committer is None:
                self._committer = asyncio.get_running_loop().create_task(self._commit_loop())
            await done
        return list(range(first, end))

    async def _make_room(self, nbytes: int) -> None:
        """Wait out a roll in progress; roll when ``nbytes`` more would overflow the segment."""
        while True:
            if self._rolling is not None:
                await asyncio.shield(self._rolling)
            elif self._segments[-1].count and self._segments[-1].end + nbytes > self.segment_bytes:
                await self._roll()
            else:
                return
            self._check_writable()  # closed or failed while we waited

    async def _roll(self) -> None:
        self._rolling = asyncio.get_running_loop().create_future()
        try:
            # the old segment is complete on disk before the next one exists
            await self._sync(force=True)
            old = self._segments[-1]
            new = await asyncio.to_thread(_close_and_create, old, self.directory)
            self._segments.append(new)
            self._bases.append(new.base)
            self._dir_dirty = True
        finally:
            self._rolling.set_result(None)
            self._rolling = None

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters and self._failed is None:
                delay = self._last_sync + self.batch_window - loop.time()
                if delay > 0 and self._last_group > max(1, len(self._waiters)):
                    self._quorum = loop.create_future()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._quorum, delay)
                    self._quorum = None
                await self._sync()
        except Exception:
            pass  # _sync already failed the waiters and the log
        except asyncio.CancelledError:
            self._fail_waiters(LogClosedError("partition log closed"))
            raise
        finally:
            self._committer = None

    async def _sync(self, *, force: bool = False) -> None:
        """Write everything framed so far, fsync it (unless policy ``os`` and not ``force``),
        then make it visible and release the appends it covers."""
        async with self._sync_lock:
            if self._failed is not None:
                raise LogClosedError("partition log failed") from self._failed
            seg, target = self._segments[-1], self._written
            data, size, count = seg.take_pending(), seg.end, seg.count
            fsync = force or self.fsync != "os"
            sync_dir = fsync and self._dir_dirty
            if data or (fsync and (self._synced < target or sync_dir)):
                self._last_sync = asyncio.get_running_loop().time()
                try:
                    await asyncio.to_thread(_write_out, seg, data, fsync, sync_dir)
                except Exception as exc:
                    self._failed = exc
                    self._fail_waiters(exc)
                    raise
                if fsync:
                    self._synced, self._dir_dirty = target, self._dir_dirty and not sync_dir
            self._publish(seg, size, count, target)

    def _publish(self, seg: Segment, size: int, count: int, target: int) -> None:
        seg.publish(size, count)
        self._durable = target
        waiters, released = self._waiters, 0
        while waiters and waiters[0][0] <= target:
            done = waiters.popleft()[1]
            released += 1
            if not done.done():
                done.set_result(None)
        self._last_group = released or self._last_group
        self._wake_readers()

    def _fail_waiters(self, exc: BaseException) -> None:
        while self._waiters:
            done = self._waiters.popleft()[1]
            if not done.done():
                done.set_exception(exc)

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise LogClosedError(f"partition log {self.directory} failed") from self._failed
        if not self._open:
            raise LogClosedError(f"partition log {self.directory} is not open")

    # -- reading ---------------------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        return self._segments[0].base if self._segments else 0

    @property
    def next_offset(self) -> int:
        return self._durable

    @property
    def size_bytes(self) -> int:
        return sum(seg.durable_size for seg in self._segments)

    def read(
        self, offset: int, max_records: int = 1000, max_bytes: int = 4 * 1024 * 1024
    ) -> list[Record]:
        """Durable records from ``offset`` (raised to ``first_offset``) on, at most ``max_records``
        and ``max_bytes`` of frames, but always at least one if there is one."""
        out: list[Record] = []
        if not self._open:
            raise LogClosedError(f"partition log {self.directory} is not open")
        segments = self._segments
        offset = max(offset, segments[0].base)
        if offset >= self._durable or max_records <= 0:
            return out
        budget = max_bytes
        for i in range(bisect_right(self._bases, offset) - 1, len(segments)):
            seg = segments[i]
            if offset < seg.base + seg.durable_count:
                budget = seg.read(out, offset, max_records, budget)
                if budget <= 0 or len(out) >= max_records:
                    break
            offset = seg.base + seg.durable_count
        return out

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        """The first offset whose timestamp is >= ``timestamp_ms`` (``next_offset`` if none)."""
        for seg in self._segments:
            if seg.durable_count and seg.max_timestamp >= timestamp_ms:
                found = seg.offset_for_timestamp(timestamp_ms)
                if found is not None:
                    return found
        return self._durable

    async def wait_for(self, offset: int, timeout: float) -> bool:
        """True as soon as the record at ``offset`` is readable; False after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._durable <= offset:
            remaining = deadline - loop.time()
            if not self._open or remaining <= 0:
                return False
            if self._changed is None:
                self._changed = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
        return True

    def _wake_readers(self) -> None:
        if self._changed is not None:
            if not self._changed.done():
                self._changed.set_result(None)
            self._changed = None

    # -- retention -------------------------------------------------------------------------

    async def enforce_retention(
        self, *, max_age_ms: int | None, max_bytes: int | None, now_ms: int
    ) -> int:
        """Delete the oldest closed segments while their newest record is older than
        ``max_age_ms`` or the log is larger than ``max_bytes``; returns the new first offset."""
        total = self.size_bytes
        drop = 0
        for seg in self._segments[:-1]:
            expired = max_age_ms is not None and seg.max_timestamp < now_ms - max_age_ms
            if not (expired or (max_bytes is not None and total > max_bytes)):
                break
            total -= seg.durable_size
            drop += 1
        return await self._drop_first(drop)

    async def truncate_before(self, offset: int) -> int:
        """Delete the closed segments whose records all lie below ``offset``."""
        drop = 0
        for seg in self._segments[:-1]:
            if seg.next_offset > offset:
                break
            drop += 1
        return await self._drop_first(drop)

    async def _drop_first(self, count: int) -> int:
        if not self._open:
            raise LogClosedError(f"partition log {self.directory} is not open")
        if count:  # out of the lists first: readers never see a segment being deleted
            dropped = self._segments[:count]
            del self._segments[:count], self._bases[:count]
            await asyncio.to_thread(_delete_segments, dropped)
        return self.first_offset


def _is_base(stem: str) -> bool:
    return len(stem) == 20 and stem.isdigit()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_out(seg: Segment, data: bytearray, fsync: bool, sync_dir: bool) -> None:
    if data:
        seg.write(data)
    if fsync:
        os.fsync(seg.fd)
    if sync_dir:
        _fsync_dir(seg.path.parent)


def _close_and_create(old: Segment, directory: Path) -> Segment:
    old.save_index()
    return Segment.open(directory, old.next_offset, create=True)


def _delete_segments(segments: list[Segment]) -> None:
    for seg in segments:
        seg.close()
        seg.path.unlink(missing_ok=True)
        segment_path(seg.path.parent, seg.base, ".index").unlink(missing_ok=True)
