"""The RESP request parser and a live RESP server under random, garbled, partial and oversized input.

The parser has a reference path (pure Python) and a fast path (hiredis, when installed); both
must split any byte stream, cut into any reads, into the same commands and the same protocol
error as the reference path does on the whole stream at once.

The live server runs on its own event loop in a thread, on an ephemeral port. Each example opens
a connection, sends random frames in random reads and reads what comes back: one reply per
command the reference parser finds, then, for a malformed frame, ``-ERR Protocol error`` and the
close. Meanwhile a well-behaved client's keys must stay intact and the loop must report no
exception, unless the fuzzed connection itself sent a valid command that changes them (FLUSHALL
reaches every client's keys in Redis too). Hypothesis draws some binary arguments from the bytes
constants of the imported source modules, so in a full run, where ``mezzo.cache.proxy`` is
imported, a random frame can be a well-formed ``FLUSHALL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mezzo.cache import resp
from mezzo.cache.commands import COMMANDS
from mezzo.cache.engine import Engine
from mezzo.cache.resp import MAX_ARGS, MAX_BULK, MAX_INLINE, RequestParser
from mezzo.cache.server import CacheServer

try:
    import uvloop
except ImportError:  # pragma: no cover - not on Windows
    uvloop = None

FAST_AVAILABLE = resp.hiredis is not None


def encode(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def feed_all(parser: RequestParser, chunks: list[bytes]) -> tuple[list[list[bytes]], str | None]:
    commands: list[list[bytes]] = []
    for chunk in chunks:
        commands += parser.feed(chunk)
    return commands, parser.error


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at the given offsets (taken modulo its length)."""
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks)]


plain_args = st.lists(st.binary(max_size=40), min_size=1, max_size=6)
tricky_args = st.lists(st.binary(max_size=40) | st.sampled_from(
    [b"", b"\r\n", b"*1\r\n", b"$-1", b"-ERR", b"+OK", b":1", b"\n*", b"\r\n*1\r\n$1\r\n"]), min_size=1, max_size=6)
garbage_piece = st.one_of(
    plain_args.map(encode),  # well formed
    tricky_args.map(encode),  # well formed, with arguments that look like frames
    st.binary(max_size=30),  # noise
    st.lists(st.binary(min_size=1, max_size=8).filter(lambda w: b"\n" not in w and not w.startswith(b"*")),
             min_size=1, max_size=4).map(lambda ws: b" ".join(ws) + b"\r\n"),  # an inline command
    st.sampled_from([
        b"*1\r\n*1\r\n$1\r\na\r\n",  # nested array
        b"*2\r\n$3\r\nGET\r\n:1\r\n",  # integer argument
        b"*1\r\n$-1\r\n", b"*-1\r\n", b"*0\r\n", b"*-7\r\n",  # nulls and empty frames
        b"*1\r\n_\r\n", b"~1\r\n$4\r\nPING\r\n", b">1\r\n$4\r\nPING\r\n", b"%1\r\n$1\r\na\r\n$1\r\nb\r\n",  # RESP3
        b"*1\r\n+PING\r\n", b"*1\r\n=8\r\ntxt:PING\r\n", b"*1\r\n-ERR\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$99999999999\r\n",  # huge bulk length
        b"*99999999999\r\n", b"*%d\r\n" % (MAX_ARGS + 1),  # huge argument count
        b"*1\r\n$03\r\nGET\r\n", b"*+1\r\n$3\r\nGET\r\n", b"* 1\r\n$3\r\nGET\r\n",  # lengths hiredis refuses
        b"*1\r\n$3\r\nGETxx", b"*2\n$3\r\nGET\r\n", b"*1\r\n$3\r\nGE",  # bad or partial terminators
        b"\r\n", b"\n", b" \r\n", b"PING\r\n", b"*", b"$",
    ]),
)


@pytest.mark.parametrize("accelerate", [False, True] if FAST_AVAILABLE else [False])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(plain_args | tricky_args, min_size=1, max_size=20),
       points=st.lists(st.integers(0, 10_000), max_size=4), between=st.lists(st.integers(0, 20), max_size=6))
def test_pipelines_come_back_whole_however_they_are_cut(
        accelerate: bool, commands: list[list[bytes]], points: list[int], between: list[int]) -> None:
    frames = [encode(c) for c in commands]
    stream = b"".join(frames)
    ends = [sum(map(len, frames[:i + 1])) for i in range(len(frames))]
    points += [ends[i % len(ends)] for i in between]  # reads that end between commands, as most do
    got, error = feed_all(RequestParser(accelerate=accelerate), cut(stream, points))
    assert error is None and got == commands


@pytest.mark.parametrize("accelerate", [False, True] if FAST_AVAILABLE else [False])
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(garbage_piece, min_size=1, max_size=12), points=st.lists(st.integers(0, 10_000), max_size=6))
def test_any_input_splits_like_the_reference_on_the_whole_stream(
        accelerate: bool, pieces: list[bytes], points: list[int]) -> None:
    stream = b"".join(pieces)
    expected = feed_all(RequestParser(accelerate=False), [stream])
    got = feed_all(RequestParser(accelerate=accelerate), cut(stream, points))
    assert got == expected
    commands, error = got
    assert all(isinstance(c, list) and c and all(type(a) is bytes for a in c) for c in commands)
    assert error is None or error.startswith("Protocol error: ")


def test_each_read_of_many_commands_uses_the_fast_path() -> None:
    if not FAST_AVAILABLE:
        pytest.skip("hiredis is not installed")
    parser = RequestParser()
    batch = b"".join(encode([b"SET", b"key:%d" % i, b"v"]) for i in range(16))
    assert parser._fast(batch) is not None  # the path redis-benchmark -P 16 takes
    assert parser._fast(encode([b"INCRBY", b"n", b"-5"])) is None  # a line starting with '-': reference path
    reader = parser._reader
    for count in (2**31, 10**9, 100_000):  # hiredis would allocate the list before any element came
        assert parser._fast(b"*%d\r\n$3\r\nGET\r\n" % count) is None and parser._reader is reader
    assert parser.feed(encode([b"INCRBY", b"n", b"-5"])) == [[b"INCRBY", b"n", b"-5"]]


@pytest.mark.parametrize("accelerate", [False, True])
def test_protocol_errors_keep_the_commands_before_them(accelerate: bool) -> None:
    parser = RequestParser(accelerate=accelerate)
    assert parser.feed(encode([b"SET", b"a", b"1"]) + b"*1\r\n:3\r\n" + encode([b"GET", b"a"])) == [[b"SET", b"a", b"1"]]
    assert parser.error == "Protocol error: expected '$', got ':'"
    assert parser.feed(encode([b"GET", b"a"])) == []  # nothing after a protocol error


@pytest.mark.parametrize(("frame", "reason"), [
    (b"*%d\r\n" % (MAX_ARGS + 1), "invalid multibulk length"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*1\r\n$%d\r\n" % (MAX_BULK + 1), "invalid bulk length"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n$" + b"9" * 5000 + b"\r\n", "invalid bulk length"),
    (b"x" * (MAX_INLINE + 1), "too big inline request"),
    (b"*" + b"1" * (MAX_INLINE + 1), "too big mbulk count string"),
    (b"*1\r\n$" + b"1" * (MAX_INLINE + 1), "too big bulk count string"),
])
def test_huge_or_malformed_lengths_are_refused_before_buffering(frame: bytes, reason: str) -> None:
    parser = RequestParser()
    assert parser.feed(frame) == [] and parser.error == f"Protocol error: {reason}"
    assert parser.pending == 0


def test_an_incomplete_command_over_the_buffer_limit_is_refused() -> None:
    parser = RequestParser(max_buffer=1000)
    assert parser.feed(b"*2\r\n$3\r\nSET\r\n$5000\r\n" + b"x" * 900) == [] and parser.error is None
    assert parser.feed(b"x" * 200) == [] and parser.error == "Protocol error: request too big"
    assert parser.pending == 0


def test_a_large_value_arriving_in_small_reads_is_parsed_once() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB with every byte value, CRLFs included
    stream = encode([b"SET", b"big", value]) + encode([b"GET", b"big"])
    parser = RequestParser()
    got = []
    for i in range(0, len(stream), 1000):
        got += parser.feed(stream[i:i + 1000])
    assert got == [[b"SET", b"big", value], [b"GET", b"big"]] and parser.pending == 0


def test_a_long_command_arriving_in_small_reads_is_parsed_once() -> None:
    args = [b"MSET"] + [b"k%d" % i for i in range(20_000)]
    stream = encode(args)
    parser = RequestParser()
    got = []
    for i in range(0, len(stream), 1000):
        got += parser.feed(stream[i:i + 1000])
        assert len(parser._buf) < 1000  # arguments already whole are taken out, never parsed again
    assert got == [args] and parser.pending == 0


def test_inline_commands_mix_with_multibulk() -> None:
    parser = RequestParser()
    stream = b"PING\r\n" + encode([b"ECHO", b"a b"]) + b"  set  k   v \r\n\r\n" + encode([b"GET", b"k"]) + b"QUIT\n"
    assert parser.feed(stream) == [[b"PING"], [b"ECHO", b"a b"], [b"set", b"k", b"v"], [b"GET", b"k"], [b"QUIT"]]
    assert parser.feed(encode([b"GET", b"k"]) + b"PING\r\n") == [[b"GET", b"k"], [b"PING"]]  # inline after a fast read


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 100))
def test_every_cut_of_a_small_pipeline_gives_the_same_commands(noise: bytes, at: int) -> None:
    commands = [[b"SET", b"k", noise], [b"GET", b"k"], [b"MGET", b"a", noise, b"c"]]
    stream = b"".join(encode(c) for c in commands)
    at %= len(stream) + 1
    assert feed_all(RequestParser(), [stream[:at], stream[at:]]) == (commands, None)


# --- a live server ---------------------------------------------------------------------------


@dataclass
class Live:
    server: CacheServer
    port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    crashes: list[dict[str, Any]] = field(default_factory=list)


def serve(server: CacheServer) -> Iterator[Live]:
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()  # as `mezzo up` runs
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    live = Live(server, sock.getsockname()[1], loop, threading.Thread(target=loop.run_forever, daemon=True))
    loop.set_exception_handler(lambda _loop, context: live.crashes.append(context))
    listener = loop.run_until_complete(loop.create_server(server.protocol, sock=sock))
    live.thread.start()
    try:
        yield live
    finally:
        async def shut() -> None:
            listener.close()
            for conn in list(server.clients.values()):
                if conn.transport is not None:
                    conn.transport.close()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        live.thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    yield from serve(CacheServer(Engine(), None, require_auth=False))


WITNESS_STRINGS = {f"intact:{i}".encode(): f"value-{i}".encode() * (i + 1) for i in range(20)}
WITNESS_HASH = (b"intact:h", {b"a": b"1", b"b": b"2"})
WITNESS_KEYS = {*WITNESS_STRINGS, WITNESS_HASH[0]}
FLUSHES = {b"flushall", b"flushdb"}  # write commands that reach keys they do not name


def seed_witness(client: redis.Redis) -> None:
    client.mset(WITNESS_STRINGS)
    client.hset(WITNESS_HASH[0], mapping=WITNESS_HASH[1])


def changes_witness(commands: list[list[bytes]]) -> bool:
    """Whether one of ``commands`` may rightly change the witness's keys: a write command (by the
    server's own table) that is FLUSHALL or FLUSHDB, or that has one of those keys among its
    arguments (wherever it stands, and whichever database the connection selected: erring on the
    side of excusing)."""
    for args in commands:
        name = args[0].lower()
        spec = COMMANDS.get(name)
        if spec is not None and "write" in spec[2] and (name in FLUSHES or not WITNESS_KEYS.isdisjoint(args[1:])):
            return True
    return False


@pytest.fixture(scope="module")
def witness(live: Live) -> Iterator[redis.Redis]:
    """A well-behaved client whose keys the fuzzed connections must never disturb."""
    client = redis.Redis(host="127.0.0.1", port=live.port, socket_timeout=10)
    seed_witness(client)
    yield client
    client.close()


def expected_exchange(stream: bytes) -> tuple[int, bool, bool]:
    """(replies to read, whether the last one is a protocol error, whether the server then closes)."""
    parser = RequestParser(accelerate=False)
    commands = parser.feed(stream)
    for index, args in enumerate(commands):
        if args[0].lower() == b"quit":
            return index + 1, False, True
    if parser.error is not None:
        return len(commands) + 1, True, True
    return len(commands), False, False


def closing_prefix(stream: bytes) -> bytes:
    """The part of ``stream`` up to the byte after which the server closes (a protocol error or QUIT).

    Bytes sent after the server closed make its kernel answer with a reset, which may discard the
    error reply before the client reads it: a real client's problem too, not the one tested here.
    """
    parser = RequestParser(accelerate=False)
    for end in range(1, len(stream) + 1):
        commands = parser.feed(stream[end - 1:end])
        if parser.error is not None or any(args[0].lower() == b"quit" for args in commands):
            return stream[:end]
    return stream


def exchange(port: int, chunks: list[bytes], replies: int, closes: bool) -> tuple[list[Any], bool]:
    """Send the reads, then collect replies until there are enough (and EOF, if one is due)."""
    reader = hiredis.Reader()
    got: list[Any] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            with contextlib.suppress(OSError):  # the server may close on a bad frame before the rest is sent
                conn.sendall(chunk)
        eof = False
        while len(got) < replies or (closes and not eof):
            data = conn.recv(65536)
            if not data:
                eof = True
                break
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                got.append(reply)
    return got, eof


def assert_witness_intact(witness: redis.Redis) -> None:
    assert witness.mget(list(WITNESS_STRINGS)) == list(WITNESS_STRINGS.values())
    assert witness.hgetall(WITNESS_HASH[0]) == WITNESS_HASH[1]


def test_only_commands_that_may_change_the_witness_keys_excuse_it() -> None:
    assert changes_witness([[b"PING"], [b"FlushAll"]]) and changes_witness([[b"flushdb", b"ASYNC"]])
    assert changes_witness([[b"DEL", b"x", b"intact:3"]]) and changes_witness([[b"hset", b"intact:h", b"a", b"9"]])
    assert changes_witness([[b"EXPIRE", b"intact:0", b"1"]]) and changes_witness([[b"getdel", b"intact:19"]])
    assert not changes_witness([[b"MGET", b"intact:0"], [b"HGETALL", b"intact:h"], [b"TYPE", b"intact:1"]])
    assert not changes_witness([[b"DEL", b"intact"], [b"SELECT", b"1"], [b"flush"], [b"intact:0", b"flushall"]])
    assert not changes_witness([[b"ECHO", b"flushall"], [b"SET", b"intact", b"intact:0 "], [b"GET", b"intact:0"]])


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(garbage_piece, min_size=1, max_size=10), points=st.lists(st.integers(0, 10_000), max_size=4))
@example(pieces=[encode([b"FLUSHALL"])], points=[])  # a fuzzed connection may send a valid FLUSHALL ...
@example(pieces=[b"\x00"], points=[])  # ... and the witness's keys must be back for the next example
@example(pieces=[encode([b"SELECT", b"3"]), b"flushdb\r\n", encode([b"DEL", b"intact:0"]), b"*1\r\n:3\r\n"], points=[5])
@example(pieces=[b"\x00"], points=[])
def test_fuzzed_connections_get_answers_or_a_protocol_error(
        live: Live, witness: redis.Redis, pieces: list[bytes], points: list[int]) -> None:
    stream = b"".join(pieces)
    replies, ends_in_error, closes = expected_exchange(stream)
    if closes:
        stream = closing_prefix(stream)
    got, eof = exchange(live.port, cut(stream, points), replies, closes)
    assert len(got) == replies and eof == closes
    if ends_in_error:
        assert isinstance(got[-1], hiredis.ReplyError) and str(got[-1]).startswith("ERR Protocol error")
    assert live.crashes == [] and live.thread.is_alive()
    if changes_witness(RequestParser(accelerate=False).feed(stream)):
        seed_witness(witness)  # the fuzzed connection was entitled to change them: put them back
    else:
        assert_witness_intact(witness)


def test_many_bad_connections_at_once_leave_good_ones_working(live: Live, witness: redis.Redis) -> None:
    bad = [b"*2\r\n$3\r\nGET\r\n$-5\r\n", b"*x\r\n", b"*1\r\n:3\r\n", b"*99999999999\r\n",
           b"*1\r\n$99999999999\r\n", b"*1\r\n_\r\n", b"x" * (MAX_INLINE + 10)]
    conns = []
    for frame in bad * 5:
        conn = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        conn.sendall(frame)
        conns.append(conn)
    pipe = witness.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"busy:{i}", i).get(f"busy:{i}")
    assert pipe.execute()[1::2] == [str(i).encode() for i in range(200)]
    for conn in conns:
        with conn:
            answer = b""
            while chunk := conn.recv(65536):  # until the server closes it
                answer += chunk
            assert answer.startswith(b"-ERR Protocol error: ") and answer.endswith(b"\r\n")
    assert live.crashes == [] and live.thread.is_alive()
    assert_witness_intact(witness)


class _Tokens:
    def authenticate(self, token: str) -> Any:
        class Principal:
            def has_verb(self, verb: Any) -> bool:
                return True

        return Principal() if token == "right" else None


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(garbage_piece, min_size=1, max_size=6))
def test_garbage_never_authenticates(pieces: list[bytes]) -> None:
    for live in serve(CacheServer(Engine(), _Tokens(), require_auth=True)):
        stream = b"".join(pieces) + encode([b"SET", b"k", b"v"])
        replies, _, closes = expected_exchange(stream)
        got, _ = exchange(live.port, [stream], replies, closes)
        commands = [*RequestParser(accelerate=False).feed(stream), [b"(protocol error)"]]
        for args, reply in zip(commands, got, strict=False):
            if args[0].lower() not in (b"ping", b"quit"):  # the commands Redis also answers before AUTH
                assert isinstance(reply, hiredis.ReplyError)  # NOAUTH, unknown command or protocol error
        assert live.server.engine.space("default").data == {} and live.crashes == []


@pytest.mark.parametrize("frame", [b"*1\r\n$ 4\r\nPING\r\n", b"*1\r\n$+4\r\nPING\r\n", b"*1\r\n$0_4\r\nPING\r\n",
                                   b"*1\r\n$04\r\nPING\r\n", b"* 1\r\n$4\r\nPING\r\n", b"*+1\r\n$4\r\nPING\r\n",
                                   b"*-0\r\n", b"*1\r\n$\r\nPING\r\n"])
@pytest.mark.parametrize("accelerate", [True, False])
def test_lengths_are_read_as_strictly_as_redis_reads_them(frame: bytes, accelerate: bool) -> None:
    parser = RequestParser(accelerate=accelerate)
    assert parser.feed(frame) == [] and parser.error is not None and "length" in parser.error


def test_an_array_begun_after_a_bulk_without_its_crlf_is_not_lost_between_reads() -> None:
    """hiredis takes the two bytes after a bulk as its CRLF whatever they are (as Redis does), then may
    begin the next array inside the same read; that half-read array must reach the next read."""
    stream = b"*1\r\n$3\r\n\x00\x00\x00\x00\x00" + encode([b""]) + encode([b"\x00" * 8])
    expected = feed_all(RequestParser(accelerate=False), [stream])
    assert expected == ([[b"\x00\x00\x00"], [b""], [b"\x00" * 8]], None)
    assert feed_all(RequestParser(accelerate=True), [stream[:17], stream[17:]]) == expected
