"""PartitionLog: the embedded broker's durable append-only partition log, on real files."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mezzo.messaging.backends.embedded.log import (
    CorruptLogError,
    LogClosedError,
    PartitionLog,
    Record,
)
from mezzo.messaging.backends.embedded.segment import HEADER_SIZE


async def opened(directory: Path, **options: object) -> PartitionLog:
    log = PartitionLog(directory, **options)  # type: ignore[arg-type]
    await log.open()
    return log


def read_all(log: PartitionLog, offset: int = 0) -> list[Record]:
    records: list[Record] = []
    while batch := log.read(offset, 7):
        records += batch
        offset = batch[-1].offset + 1
    return records


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def index_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.index"))


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[PartitionLog]:
    log = await opened(tmp_path / "p0")
    yield log
    await log.close()


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


# -- appending and reading ---------------------------------------------------------------


async def test_empty_log(log: PartitionLog) -> None:
    assert (log.first_offset, log.next_offset, log.size_bytes) == (0, 0, 0)
    assert log.read(0) == []
    assert log.offset_for_timestamp(0) == 0
    assert await log.append([]) == []


async def test_append_read_round_trip(log: PartitionLog) -> None:
    assert await log.append([(10, b"a"), (11, b""), (12, b"c" * 1000)]) == [0, 1, 2]
    assert await log.append([(13, b"d")]) == [3]
    assert log.read(0) == [
        Record(0, 10, b"a"),
        Record(1, 11, b""),
        Record(2, 12, b"c" * 1000),
        Record(3, 13, b"d"),
    ]
    assert log.read(1, max_records=2) == [Record(1, 11, b""), Record(2, 12, b"c" * 1000)]
    assert log.read(4) == []
    assert (log.first_offset, log.next_offset) == (0, 4)
    assert log.size_bytes == 4 * HEADER_SIZE + 1002


async def test_read_max_bytes_returns_at_least_one_record(log: PartitionLog) -> None:
    await log.append([(0, b"x" * 100), (0, b"y" * 100), (0, b"z" * 10)])
    assert [r.offset for r in log.read(0, max_bytes=1)] == [0]
    assert [r.offset for r in log.read(0, max_bytes=2 * (HEADER_SIZE + 100))] == [0, 1]
    assert [r.offset for r in log.read(1, max_bytes=HEADER_SIZE + 101)] == [1]


async def test_records_larger_than_any_read_buffer(tmp_path: Path) -> None:
    big = os.urandom(5 * 1024 * 1024)  # more than the default max_bytes and the scan chunk
    log = await opened(tmp_path)
    await log.append([(1, b"a"), (2, big), (3, b"b" * 50_000), (4, b"c")])
    await log.close()
    log = await opened(tmp_path)  # the tail scan reads past its chunk
    assert [r.payload for r in log.read(0, max_bytes=10)] == [b"a"]
    assert [r.payload for r in log.read(1)] == [big]
    assert [r.payload for r in log.read(2, max_bytes=10)] == [b"b" * 50_000]
    assert [r.offset for r in log.read(2)] == [2, 3]
    await log.close()


async def test_offsets_contiguous_across_segment_rolls(tmp_path: Path) -> None:
    log = await opened(tmp_path, segment_bytes=300)
    expected: list[Record] = []
    for i in range(40):
        batch = [(i, bytes([i]) * (i % 50)) for _ in range(1 + i % 3)]
        offsets = await log.append(batch)
        assert offsets == list(range(len(expected), len(expected) + len(batch)))
        expected += [Record(o, ts, p) for o, (ts, p) in zip(offsets, batch, strict=True)]
    assert len(segment_files(tmp_path)) > 5
    assert log.read(0, 10_000) == expected  # one read crosses every segment
    assert read_all(log) == expected
    assert read_all(log, 17) == expected[17:]
    await log.close()


async def test_a_record_larger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    log = await opened(tmp_path, segment_bytes=100)
    await log.append([(0, b"small")])
    await log.append([(1, b"L" * 500)])
    await log.append([(2, b"small")])
    assert [len(r.payload) for r in log.read(0)] == [5, 500, 5]
    assert len(segment_files(tmp_path)) == 3
    await log.close()


async def test_reopen_keeps_everything_and_continues(tmp_path: Path) -> None:
    log = await opened(tmp_path, segment_bytes=500)
    for i in range(30):
        await log.append([(i, f"r{i}".encode())])
    before = read_all(log)
    await log.close()
    with pytest.raises(LogClosedError):
        await log.append([(0, b"late")])

    log = await opened(tmp_path, segment_bytes=500)
    assert read_all(log) == before
    assert await log.append([(99, b"after")]) == [30]
    await log.close()
    log = await opened(tmp_path, segment_bytes=500)
    assert read_all(log) == [*before, Record(30, 99, b"after")]
    await log.close()


async def test_damaged_index_cache_is_rebuilt(tmp_path: Path) -> None:
    log = await opened(tmp_path, segment_bytes=200)
    for i in range(20):
        await log.append([(i, b"p" * 30)])
    before = read_all(log)
    await log.close()
    caches = index_files(tmp_path)
    assert caches
    caches[0].write_bytes(b"garbage")
    caches[1].unlink()
    log = await opened(tmp_path, segment_bytes=200)
    assert read_all(log) == before
    assert log.offset_for_timestamp(7) == 7
    await log.close()


# -- crash safety ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda frame: frame[: HEADER_SIZE - 3], id="partial-header"),
        pytest.param(lambda frame: frame[:-2], id="partial-payload"),
        pytest.param(lambda frame: b"\x00" * len(frame), id="zeroes"),
        pytest.param(lambda frame: os.urandom(7) + frame, id="garbage"),
    ],
)
async def test_torn_tail_is_truncated(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    log = await opened(tmp_path)
    await log.append([(1, b"one"), (2, b"two")])
    await log.close()
    tail = segment_files(tmp_path)[-1]
    good_size = tail.stat().st_size
    frame = tail.read_bytes()[-(HEADER_SIZE + 3) :]  # a whole valid frame, offset 1
    with tail.open("ab") as f:
        f.write(damage(frame))

    log = await opened(tmp_path)
    assert tail.stat().st_size == good_size
    assert log.next_offset == 2
    assert await log.append([(3, b"three")]) == [2]
    assert [r.payload for r in log.read(0)] == [b"one", b"two", b"three"]
    await log.close()


async def test_corrupt_crc_in_tail_drops_the_damaged_record(tmp_path: Path) -> None:
    log = await opened(tmp_path)
    await log.append([(1, b"one"), (2, b"two")])
    await log.close()
    tail = segment_files(tmp_path)[-1]
    data = bytearray(tail.read_bytes())
    data[-1] ^= 0xFF
    tail.write_bytes(bytes(data))

    log = await opened(tmp_path)
    assert log.read(0) == [Record(0, 1, b"one")]
    assert await log.append([(3, b"new")]) == [1]
    await log.close()


async def test_corruption_in_a_closed_segment_raises(tmp_path: Path) -> None:
    log = await opened(tmp_path, segment_bytes=200)
    for i in range(20):
        await log.append([(i, b"p" * 30)])
    await log.close()
    first = segment_files(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[HEADER_SIZE + 5] ^= 0xFF  # payload of offset 0
    first.write_bytes(bytes(data))

    log = await opened(tmp_path, segment_bytes=200)  # index cache matches: caught on read
    with pytest.raises(CorruptLogError, match=rf"{first.name}.*CRC mismatch at byte 0"):
        log.read(0)
    await log.close()

    first.with_suffix(".index").unlink()  # without the cache, open scans and refuses
    with pytest.raises(CorruptLogError, match=rf"{first.name}.*at byte 0"):
        await opened(tmp_path, segment_bytes=200)


async def test_a_missing_segment_is_an_error(tmp_path: Path) -> None:
    log = await opened(tmp_path, segment_bytes=100)
    for i in range(5):
        await log.append([(i, b"p" * 80)])
    await log.close()
    segment_files(tmp_path)[2].unlink()
    with pytest.raises(CorruptLogError, match="previous segment ends at"):
        await opened(tmp_path)


CRASH_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from mezzo.messaging.backends.embedded.log import PartitionLog

    async def main():
        log = PartitionLog(Path(sys.argv[1]), fsync="batch", segment_bytes=32 * 1024)
        await log.open()

        async def writer(w):
            i = 0
            while True:
                batch = [(i, f"{w}:{i}:{k}".encode() * 4) for k in range(1 + i % 4)]
                offsets = await log.append(batch)
                for offset, (_, payload) in zip(offsets, batch):
                    sys.stdout.write(f"{offset} {payload.hex()}\\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(writer(w) for w in range(4)))

    asyncio.run(main())
    """
)


def test_sigkill_loses_nothing_append_returned(tmp_path: Path) -> None:
    directory = tmp_path / "p0"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    acked: dict[int, bytes] = {}
    deadline = time.monotonic() + 60
    try:
        while len(acked) < 3000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            offset, payload = line.split()
            acked[int(offset)] = bytes.fromhex(payload.decode())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # not communicate(): it reads the pipe past what proc.stdout has already buffered
    rest, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    for line in rest.splitlines(keepends=True):
        if line.endswith(b"\n"):  # the last line may be cut by the kill
            offset, payload = line.split()
            acked[int(offset)] = bytes.fromhex(payload.decode())
    assert len(acked) >= 3000, err.decode()

    async def check() -> None:
        log = await opened(directory)
        stored = {r.offset: r.payload for r in read_all(log)}
        assert len(segment_files(directory)) > 1
        assert {o: stored.get(o) for o in acked} == acked
        assert sorted(stored) == list(range(len(stored)))
        await log.close()

    asyncio.run(check())


# -- fsync policies and group commit -----------------------------------------------------


async def test_batch_policy_group_commits_concurrent_appends(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    log = await opened(tmp_path, fsync="batch", segment_bytes=4096)
    fsync_calls.clear()
    appends = 0

    async def producer(p: int) -> list[tuple[int, bytes]]:
        nonlocal appends
        got = []
        for i in range(20):
            batch = [(i, f"{p}-{i}-{k}".encode()) for k in range(1 + (p + i) % 3)]
            offsets = await log.append(batch)
            appends += 1
            assert log.next_offset > offsets[-1]  # readable when append returns
            got += [(o, payload) for o, (_, payload) in zip(offsets, batch, strict=True)]
        return got

    results = await asyncio.gather(*(producer(p) for p in range(50)))
    written = dict(pair for result in results for pair in result)
    assert sorted(written) == list(range(log.next_offset))  # unique and contiguous
    assert {r.offset: r.payload for r in read_all(log)} == written
    assert 0 < len(fsync_calls) < appends
    await log.close()

    log = await opened(tmp_path)
    assert {r.offset: r.payload for r in read_all(log)} == written
    await log.close()


async def test_a_lone_append_after_a_group_waits_out_the_window(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    log = await opened(tmp_path, fsync="batch", batch_window=0.05)
    assert await asyncio.gather(*(log.append([(i, b"g")]) for i in range(3))) == [[0], [1], [2]]
    before = len(fsync_calls)
    assert await log.append([(3, b"lone")]) == [3]  # expects company, gets none: the window ends
    assert len(fsync_calls) == before + 1
    assert log.read(3) == [Record(3, 3, b"lone")]
    await log.close()


@pytest.mark.parametrize("policy", ["always", "batch", "os"])
async def test_close_with_appends_in_flight(tmp_path: Path, policy: str) -> None:
    log = await opened(tmp_path, fsync=policy, segment_bytes=256)
    tasks = [asyncio.create_task(log.append([(i, b"%d" % i)])) for i in range(30)]
    await asyncio.sleep(0)
    await log.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    acked = {r[0]: b"%d" % i for i, r in enumerate(results) if isinstance(r, list)}
    assert all(isinstance(r, list | LogClosedError) for r in results), results
    assert acked
    log = await opened(tmp_path)
    assert {r.offset: r.payload for r in read_all(log)} == acked
    await log.close()


@pytest.mark.parametrize("policy", ["always", "batch", "os"])
async def test_each_fsync_policy_is_durable_and_readable(
    tmp_path: Path, fsync_calls: list[int], policy: str
) -> None:
    log = await opened(tmp_path, fsync=policy)
    fsync_calls.clear()
    for i in range(10):
        assert await log.append([(i, b"x%d" % i)]) == [i]
        assert log.read(i) == [Record(i, i, b"x%d" % i)]
    if policy == "os":
        assert fsync_calls == []
    else:
        assert len(fsync_calls) >= 10  # a sequential caller gets its own fsync every time
    await log.close()
    log = await opened(tmp_path, fsync=policy)
    assert [r.payload for r in read_all(log)] == [b"x%d" % i for i in range(10)]
    await log.close()


async def test_an_fsync_failure_fails_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await opened(tmp_path)
    await log.append([(1, b"kept")])

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    results = await asyncio.gather(
        *(log.append([(2, b"lost")]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, OSError) for r in results), results
    with pytest.raises(LogClosedError, match="failed"):
        await log.append([(3, b"refused")])
    assert log.read(0) == [Record(0, 1, b"kept")]  # nothing unsynced became visible
    await log.close()
    monkeypatch.undo()
    log = await opened(tmp_path)
    assert log.read(0)[0] == Record(0, 1, b"kept")
    await log.close()


def test_invalid_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        PartitionLog(tmp_path, fsync="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PartitionLog(tmp_path, segment_bytes=1)


# -- waiting -----------------------------------------------------------------------------


async def test_wait_for_wakes_on_append(log: PartitionLog) -> None:
    waiter = asyncio.create_task(log.wait_for(0, timeout=30))
    await asyncio.sleep(0)
    assert not waiter.done()
    await log.append([(1, b"a")])
    assert await asyncio.wait_for(waiter, 10) is True
    assert await log.wait_for(0, timeout=0) is True  # already there


async def test_wait_for_times_out(log: PartitionLog) -> None:
    await log.append([(1, b"a")])
    assert await log.wait_for(1, timeout=0.01) is False
    assert await log.wait_for(5, timeout=0) is False


async def test_wait_for_returns_false_when_closed(tmp_path: Path) -> None:
    log = await opened(tmp_path)
    waiter = asyncio.create_task(log.wait_for(0, timeout=30))
    await asyncio.sleep(0)
    await log.close()
    assert await asyncio.wait_for(waiter, 10) is False


# -- retention ---------------------------------------------------------------------------


async def filled(directory: Path, count: int = 30) -> PartitionLog:
    """A log with one record per millisecond 1000.., several closed segments."""
    log = await opened(directory, segment_bytes=5 * (HEADER_SIZE + 20))
    for i in range(count):
        await log.append([(1000 + i, b"r" * 20)])
    return log


async def test_retention_by_age_deletes_only_old_closed_segments(tmp_path: Path) -> None:
    log = await filled(tmp_path)  # segments of 5 records: offsets 0-4, 5-9, ..., 25-29 (active)
    assert len(segment_files(tmp_path)) == 6
    assert await log.enforce_retention(max_age_ms=100, max_bytes=None, now_ms=1100) == 0
    # newest of 0-4 is 1004, of 5-9 is 1009: both older than 1112 - 100
    assert await log.enforce_retention(max_age_ms=100, max_bytes=None, now_ms=1112) == 10
    assert log.read(0)[0].offset == 10  # reads clamp to first_offset
    assert log.offset_for_timestamp(0) == 10
    # everything expired: the active segment stays
    assert await log.enforce_retention(max_age_ms=1, max_bytes=None, now_ms=10**9) == 25
    assert [p.name for p in segment_files(tmp_path)] == [f"{25:020d}.log"]
    assert [r.offset for r in read_all(log)] == list(range(25, 30))
    assert await log.append([(2000, b"new")]) == [30]
    await log.close()
    log = await opened(tmp_path)
    assert (log.first_offset, log.next_offset) == (25, 31)
    await log.close()


async def test_retention_by_size(tmp_path: Path) -> None:
    log = await filled(tmp_path)
    segment = 5 * (HEADER_SIZE + 20)
    assert log.size_bytes == 6 * segment
    assert await log.enforce_retention(max_age_ms=None, max_bytes=10 * segment, now_ms=0) == 0
    assert await log.enforce_retention(max_age_ms=None, max_bytes=4 * segment, now_ms=0) == 10
    assert log.size_bytes == 4 * segment
    assert await log.enforce_retention(max_age_ms=None, max_bytes=0, now_ms=0) == 25
    assert log.size_bytes == segment
    assert len(segment_files(tmp_path)) == 1
    assert not any(int(p.stem) < 25 for p in index_files(tmp_path))
    await log.close()


async def test_truncate_before_drops_whole_segments_only(tmp_path: Path) -> None:
    log = await filled(tmp_path)
    assert await log.truncate_before(7) == 5  # 5-9 still holds offsets >= 7
    assert await log.truncate_before(10) == 10
    assert await log.truncate_before(1000) == 25  # never the active segment
    assert log.read(3)[0].offset == 25
    await log.close()


# -- timestamps --------------------------------------------------------------------------


async def test_offset_for_timestamp(tmp_path: Path) -> None:
    log = await filled(tmp_path)
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(1000) == 0
    assert log.offset_for_timestamp(1013) == 13
    assert log.offset_for_timestamp(1029) == 29
    assert log.offset_for_timestamp(1030) == 30
    await log.close()


async def test_offset_for_timestamp_does_not_assume_order(tmp_path: Path) -> None:
    log = await opened(tmp_path, segment_bytes=3 * (HEADER_SIZE + 1))
    stamps = [50, 10, 20, 70, 30, 60, 10, 80, 40]
    for ts in stamps:
        await log.append([(ts, b"x")])
    for probe in range(0, 100, 5):
        expected = next((i for i, ts in enumerate(stamps) if ts >= probe), len(stamps))
        assert log.offset_for_timestamp(probe) == expected, probe
    await log.close()


async def test_offset_for_timestamp_in_a_long_segment(log: PartitionLog) -> None:
    # many index blocks in one segment
    for i in range(0, 3000, 100):
        await log.append([(t, b"p" * 40) for t in range(i, i + 100)])
    for probe in (0, 1, 999, 1500, 2999):
        assert log.offset_for_timestamp(probe) == probe
    assert log.offset_for_timestamp(3000) == 3000


# -- model check -------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.lists(st.tuples(st.integers(0, 2**40), st.binary(max_size=64)), min_size=1, max_size=8),
        st.just("reopen"),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=operations,
    segment_bytes=st.sampled_from([64, 256, 4096]),
    policy=st.sampled_from(["batch", "os"]),
)
def test_log_matches_an_in_memory_list(ops: list, segment_bytes: int, policy: str) -> None:
    async def scenario(directory: Path) -> None:
        model: list[Record] = []
        log = await opened(directory, segment_bytes=segment_bytes, fsync=policy)
        for op in ops:
            if op == "reopen":
                await log.close()
                log = await opened(directory, segment_bytes=segment_bytes, fsync=policy)
            else:
                offsets = await log.append(op)
                model += [Record(o, ts, p) for o, (ts, p) in zip(offsets, op, strict=True)]
            assert read_all(log) == model
            assert log.next_offset == len(model)
        for probe in {0, *(r.timestamp_ms for r in model)}:
            expected = next((r.offset for r in model if r.timestamp_ms >= probe), len(model))
            assert log.offset_for_timestamp(probe) == expected
        await log.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory)))
