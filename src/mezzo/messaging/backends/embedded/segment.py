"""One segment file of a partition log: the frame codec, its sparse in-memory index and recovery.

Frame (little-endian, 25-byte header, then the payload)::

    magic u8 (0xA1 = frame format version 1) | crc u32 | length u32 | offset u64 | timestamp_ms i64 | payload

``crc`` is zlib's CRC-32 over every byte after it (length, offset, timestamp, payload), so a
torn or bit-flipped length is caught as well as a damaged payload. The absolute offset is stored
so a scan notices a misaligned or misplaced frame. Segment ``<base>.log`` holds offsets
``base, base+1, ...`` back to back with no gaps or padding.

The index keeps one entry per ``INDEX_INTERVAL`` bytes of frames (the Kafka habit): the entry's
relative offset, its file position and the running maximum timestamp up to and including its
block, so both offset and timestamp look-ups are a bisect plus a scan of at most one block.
A closed segment's index is cached in ``<base>.index``; the cache is checked against the log's
size and its own CRC and rebuilt by a verifying scan whenever it does not match.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

MAGIC = 0xA1
HEADER = struct.Struct("<BIIQq")  # magic, crc, length, offset, timestamp_ms
CRC_TAIL = struct.Struct("<IQq")  # the header fields the crc covers
_MAGIC_CRC = struct.Struct("<BI")
HEADER_SIZE = HEADER.size
INDEX_INTERVAL = 4096
SCAN_CHUNK = 4 * 1024 * 1024
MIN_TS = -(2**63)

_INDEX_HEAD = struct.Struct("<4sBxxxQQQQ")  # magic, version, base, log size, records, entries
_INDEX_MAGIC = b"MZIX"
_INDEX_CACHE = sys.byteorder == "little"  # arrays are stored in native order
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


class CorruptLogError(Exception):
    """A segment holds a damaged frame where no torn write can be (anywhere but the log's tail)."""


class Record(NamedTuple):
    offset: int
    timestamp_ms: int
    payload: bytes


def segment_path(directory: Path, base: int, suffix: str = ".log") -> Path:
    return directory / f"{base:020d}{suffix}"


def frames_size(records: Sequence[tuple[int, bytes]]) -> int:
    return HEADER_SIZE * len(records) + sum(len(payload) for _, payload in records)


class Segment:
    """Frames ``base .. base+count-1``: ``end``/``count`` cover what was encoded (including the
    unwritten ``pending`` buffer); ``durable_size``/``durable_count`` what readers may see."""

    __slots__ = (
        "base",
        "count",
        "durable_count",
        "durable_size",
        "end",
        "fd",
        "maxts",
        "offs",
        "path",
        "pending",
        "poss",
    )

    def __init__(self, path: Path, base: int, fd: int) -> None:
        self.path = path
        self.base = base
        self.fd = fd
        self.end = self.count = self.durable_size = self.durable_count = 0
        self.pending = bytearray()
        self.offs = array("q")  # index: offset relative to base of each block's first record
        self.poss = array("q")  # index: file position of that record
        self.maxts = array("q")  # index: max timestamp of this and all earlier blocks

    @classmethod
    def open(cls, directory: Path, base: int, *, create: bool = False) -> Segment:
        path = segment_path(directory, base)
        flags = _OPEN_FLAGS | (os.O_CREAT | os.O_EXCL if create else 0)
        return cls(path, base, os.open(path, flags, 0o644))

    @property
    def next_offset(self) -> int:
        return self.base + self.count

    @property
    def max_timestamp(self) -> int:
        return self.maxts[-1] if self.maxts else MIN_TS

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- writing ---------------------------------------------------------------------------

    def encode(self, records: Sequence[tuple[int, bytes]], first_offset: int) -> None:
        """Frame ``records`` into the pending buffer and index them (no I/O)."""
        buf, offs, poss, maxts = self.pending, self.offs, self.poss, self.maxts
        pack_tail, pack_head, crc32 = CRC_TAIL.pack, _MAGIC_CRC.pack, zlib.crc32
        pos, rel, off = self.end, first_offset - self.base, first_offset
        last = poss[-1] if poss else -INDEX_INTERVAL
        top = maxts[-1] if maxts else MIN_TS
        for ts, payload in records:
            if pos - last >= INDEX_INTERVAL:
                if maxts:
                    maxts[-1] = top
                offs.append(rel)
                poss.append(pos)
                maxts.append(top)
                last = pos
            if ts > top:
                top = ts
            tail = pack_tail(len(payload), off, ts)
            buf += pack_head(MAGIC, crc32(payload, crc32(tail)))
            buf += tail
            buf += payload
            pos += HEADER_SIZE + len(payload)
            rel += 1
            off += 1
        if maxts:
            maxts[-1] = top
        self.end = pos
        self.count += len(records)

    def take_pending(self) -> bytearray:
        data, self.pending = self.pending, bytearray()
        return data

    def write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def publish(self, size: int, count: int) -> None:
        self.durable_size, self.durable_count = size, count

    # -- reading ---------------------------------------------------------------------------

    def read(self, out: list[Record], offset: int, max_records: int, budget: int) -> int:
        """Append durable records from ``offset`` on to ``out`` until ``max_records`` are there,
        the frame bytes would exceed ``budget`` (unless ``out`` is empty) or the segment ends.
        Returns the budget left; ``0`` means the next frame did not fit."""
        i = bisect_right(self.offs, offset - self.base) - 1
        pos, cur, stop = self.poss[i], self.base + self.offs[i], self.durable_size
        avg = stop // max(self.durable_count, 1) + 1
        unpack, crc32, fd = HEADER.unpack_from, zlib.crc32, self.fd
        buf, view, start = b"", memoryview(b""), pos
        while pos < stop and len(out) < max_records:
            p = pos - start
            if p + HEADER_SIZE > len(buf):
                want = INDEX_INTERVAL + min(budget, avg * (max_records - len(out))) + HEADER_SIZE
                buf = os.pread(fd, min(stop - pos, want), pos)
                view, start, p = memoryview(buf), pos, 0
            magic, crc, length, foff, ts = unpack(buf, p)
            e = p + HEADER_SIZE + length
            if magic != MAGIC or foff != cur or pos + HEADER_SIZE + length > stop:
                raise self._corrupt(pos, cur, "bad frame header")
            if e > len(buf):  # the frame runs past the chunk read: read from its start
                buf = os.pread(fd, min(stop - pos, max(e - p, INDEX_INTERVAL + budget)), pos)
                view, start, p, e = memoryview(buf), pos, 0, e - p
            if cur >= offset:
                size = e - p
                if size > budget and out:
                    return 0
                if crc32(view[p + 5 : e]) != crc:
                    raise self._corrupt(pos, cur, "CRC mismatch")
                out.append(Record(cur, ts, buf[p + HEADER_SIZE : e]))
                budget -= size
                if budget <= 0:
                    return 0
            pos += e - p
            cur += 1
        return budget

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """First durable offset here whose timestamp is >= ``timestamp_ms``, or None."""
        block = bisect_right(self.maxts, timestamp_ms - 1)  # first block whose running max >= ts
        if block >= len(self.maxts) or self.offs[block] >= self.durable_count:
            return None
        records: list[Record] = []
        first = self.base + self.offs[block]
        stop = self.base + (self.offs[block + 1] if block + 1 < len(self.offs) else self.count)
        self.read(records, first, stop - first, sys.maxsize)
        return next((r.offset for r in records if r.timestamp_ms >= timestamp_ms), None)

    def _corrupt(self, pos: int, offset: int, reason: str) -> CorruptLogError:
        return CorruptLogError(f"{self.path}: {reason} at byte {pos} (expected offset {offset})")

    # -- recovery --------------------------------------------------------------------------

    def scan(self, *, tail: bool) -> int:
        """Verify every frame and rebuild the index. A damaged frame in the tail segment is
        a torn write: the file is cut there and the number of bytes dropped returned; anywhere
        else it raises CorruptLogError."""
        size = os.fstat(self.fd).st_size
        self.offs, self.poss, self.maxts = array("q"), array("q"), array("q")
        unpack, crc32 = HEADER.unpack_from, zlib.crc32
        pos, off, last, top = 0, self.base, -INDEX_INTERVAL, MIN_TS
        buf, view, start = b"", memoryview(b""), 0
        reason = ""
        while pos < size:
            p = pos - start
            if p + HEADER_SIZE > len(buf):
                if pos + HEADER_SIZE > size:
                    reason = "truncated frame header"
                    break
                buf = os.pread(self.fd, min(size - pos, SCAN_CHUNK), pos)
                view, start, p = memoryview(buf), pos, 0
            magic, crc, length, foff, ts = unpack(buf, p)
            if magic != MAGIC or foff != off:
                reason = "bad frame header"
                break
            e = p + HEADER_SIZE + length
            if pos + HEADER_SIZE + length > size:
                reason = "truncated frame"
                break
            if e > len(buf):
                buf = os.pread(self.fd, max(SCAN_CHUNK, e - p), pos)
                view, start, p, e = memoryview(buf), pos, 0, e - p
            if crc32(view[p + 5 : e]) != crc:
                reason = "CRC mismatch"
                break
            if pos - last >= INDEX_INTERVAL:
                if self.maxts:
                    self.maxts[-1] = top
                self.offs.append(off - self.base)
                self.poss.append(pos)
                self.maxts.append(top)
                last = pos
            top = max(top, ts)
            pos += e - p
            off += 1
        if self.maxts:
            self.maxts[-1] = top
        self.end = self.durable_size = pos
        self.count = self.durable_count = off - self.base
        if pos < size:
            if not tail:
                raise self._corrupt(pos, off, reason)
            os.ftruncate(self.fd, pos)
            os.fsync(self.fd)
        return size - pos

    def save_index(self) -> None:
        """Cache the index of this (closed, synced) segment; no fsync: a torn cache is rebuilt."""
        if not _INDEX_CACHE:
            return
        head = _INDEX_HEAD.pack(_INDEX_MAGIC, 1, self.base, self.end, self.count, len(self.offs))
        body = head + self.offs.tobytes() + self.poss.tobytes() + self.maxts.tobytes()
        path = segment_path(self.path.parent, self.base, ".index")
        tmp = path.with_suffix(".index.tmp")
        tmp.write_bytes(body + zlib.crc32(body).to_bytes(4, "little"))
        os.replace(tmp, path)

    def load_index(self) -> bool:
        """Adopt the cached index if it matches this log file exactly."""
        try:
            data = segment_path(self.path.parent, self.base, ".index").read_bytes()
        except FileNotFoundError:
            return False
        hs = _INDEX_HEAD.size
        if not _INDEX_CACHE or len(data) < hs + 4:
            return False
        if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
            return False
        magic, version, base, size, count, n = _INDEX_HEAD.unpack_from(data)
        if (magic, version, base) != (_INDEX_MAGIC, 1, self.base) or len(data) != hs + 24 * n + 4:
            return False
        if size != os.fstat(self.fd).st_size or (n == 0) != (count == 0):
            return False
        for arr, i in ((self.offs, 0), (self.poss, 1), (self.maxts, 2)):
            del arr[:]
            arr.frombytes(data[hs + 8 * n * i : hs + 8 * n * (i + 1)])
        self.end = self.durable_size = size
        self.count = self.durable_count = count
        return True
